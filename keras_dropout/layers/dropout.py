"""MCDropout: Bernoulli (inverted) dropout that can sample at inference."""

import keras
from keras import ops

from keras_dropout import masks
from keras_dropout.layers.sampling_layer import SamplingLayer
from keras_dropout.layers.sampling_layer import validate_rate
from keras_dropout.sampling import current_seed_scope


def validate_noise_shape(noise_shape):
    """Returns `noise_shape` as a tuple of positive ints / None, or raises."""
    if noise_shape is None:
        return None
    if isinstance(noise_shape, str):
        raise ValueError(
            "Invalid value received for argument `noise_shape`. Expected a "
            f"tuple or list of integers. Received: noise_shape={noise_shape!r}"
        )
    try:
        noise_shape = tuple(noise_shape)
    except TypeError:
        raise ValueError(
            "Invalid value received for argument `noise_shape`. Expected a "
            f"tuple or list of integers. Received: noise_shape={noise_shape!r}"
        ) from None
    for dim in noise_shape:
        if dim is not None and (
            isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0
        ):
            raise ValueError(
                "Invalid value received for argument `noise_shape`. Expected "
                "positive integers or None. "
                f"Received: noise_shape={noise_shape!r}"
            )
    return noise_shape


def check_noise_shape_fits(noise_shape, input_shape):
    """Raises unless `noise_shape` broadcasts against `input_shape`."""
    if noise_shape is None:
        return
    message = (
        "Invalid value received for argument `noise_shape`. Expected the "
        "input's rank, with each dimension None, 1 or the input's size. "
        f"Received: noise_shape={noise_shape} for input shape "
        f"{tuple(input_shape)}"
    )
    if len(noise_shape) != len(input_shape):
        raise ValueError(message)
    for noise_dim, input_dim in zip(noise_shape, input_shape):
        if noise_dim not in (None, 1) and input_dim is not None:
            if noise_dim != input_dim:
                raise ValueError(message)


def concrete_noise_shape(noise_shape, input_shape):
    """`noise_shape` with None replaced by the input's dimensions (`ops.shape`)."""
    input_shape = tuple(input_shape)
    if noise_shape is None:
        return input_shape
    return tuple(
        input_dim if noise_dim is None else noise_dim
        for noise_dim, input_dim in zip(noise_shape, input_shape)
    )


def batch_shared_noise(noise_shape, input_shape, seed):
    """`(concrete noise shape, seed)` for a mask drawn under `seed_scope`.

    A `noise_shape` whose batch dimension is 1 shares one mask across the
    rows of a call. Under `predict_mc` the batch holds S samples of each row,
    and sharing one mask across all of them would make every sample equal:
    the mask is then drawn per Monte Carlo sample and shared by the rows.
    """
    shape = concrete_noise_shape(noise_shape, input_shape)
    scope = current_seed_scope()
    seed = ops.convert_to_tensor(seed)
    if (
        noise_shape is None
        or noise_shape[0] != 1
        or scope is None
        or scope.sample_ids is None
        or len(seed.shape) != 2
    ):
        return shape, seed
    batch = input_shape[0]
    per_sample = scope.sample_seeds(scope.last_call_seed)  # (S, 2)
    rows = batch // ops.shape(per_sample)[0]
    return (batch,) + tuple(shape[1:]), ops.tile(per_sample, (rows, 1))  # row-major tiling


def inverted_dropout(inputs, rate, noise_shape, seed):
    """`inputs * keep / (1 - rate)` with a Bernoulli keep mask of `noise_shape`.

    The one dropout formula of the package: `MCDropout`, the spatial layers
    and Keras' own dropout layers while they sample all call it.
    """
    return inputs * dropout_multiplier(rate, noise_shape, seed, inputs.dtype)


def dropout_multiplier(rate, noise_shape, seed, dtype):
    """`keep / (1 - rate)`: what inverted dropout multiplies its input by."""
    keep = masks.keep_mask(noise_shape, rate, seed, dtype)
    return keep * (1.0 / (1.0 - rate))


@keras.saving.register_keras_serializable(package="keras_dropout")
class MCDropout(SamplingLayer):
    """Applies dropout to the input, in training and, on request, at inference.

    A drop-in replacement for `keras.layers.Dropout`: each input unit is set
    to 0 with probability `rate` and the others are scaled by
    `1 / (1 - rate)`, so the expected sum is unchanged. Unlike Keras'
    layer it also samples at inference time when `always_on=True` or inside
    `kd.sampling()` / `kd.predict_mc`, which is Monte Carlo dropout
    (Gal & Ghahramani, 2016); no other layer leaves inference mode.

    Args:
        rate: float in [0, 1): fraction of the input units to drop. 1.0 is
            refused (Keras accepts it) since it makes the scale infinite.
        noise_shape: optional tuple, the shape of the binary mask that is
            broadcast against the input; `None` entries take the input's size.
            For inputs `(batch, timesteps, features)`,
            `noise_shape=(None, 1, None)` shares the mask across timesteps.
        seed: optional integer for reproducible training-time masks.
        always_on: if `True`, sample at inference too.

    Call arguments:
        inputs: input tensor of any rank.
        training: Python bool; `True` applies dropout.

    Returns:
        A tensor of the input's shape and dtype.

    Example:

    >>> import numpy as np, keras_dropout as kd
    >>> layer = kd.layers.MCDropout(0.5, always_on=True)
    >>> y = layer(np.ones((2, 4), "float32"))
    >>> sorted(set(np.asarray(y).ravel().tolist())) in ([0.0, 2.0], [0.0], [2.0])
    True
    """

    def __init__(self, rate, noise_shape=None, seed=None, always_on=False, **kwargs):
        self.rate = validate_rate(rate)
        self.noise_shape = validate_noise_shape(noise_shape)
        super().__init__(seed=seed, always_on=always_on, **kwargs)

    @property
    def is_noisy(self):
        return self.rate > 0

    def build(self, input_shape):
        check_noise_shape_fits(self.noise_shape, input_shape)

    def sampled_multiplier(self, input_shape, dtype, seed):
        shape, seed = batch_shared_noise(self.noise_shape, input_shape, seed)
        return dropout_multiplier(self.rate, shape, seed, dtype)

    def get_config(self):
        base_config = super().get_config()
        config = {"rate": self.rate, "noise_shape": self.noise_shape}
        return {**base_config, **config}
