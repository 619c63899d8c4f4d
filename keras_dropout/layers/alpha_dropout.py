"""MCAlphaDropout: dropout that keeps SELU's self-normalising mean and variance."""

import keras
from keras import ops

from keras_dropout import masks
from keras_dropout.layers.dropout import check_noise_shape_fits
from keras_dropout.layers.dropout import batch_shared_noise
from keras_dropout.layers.dropout import validate_noise_shape
from keras_dropout.layers.sampling_layer import SamplingLayer
from keras_dropout.layers.sampling_layer import validate_rate

_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946


def alpha_dropout(inputs, rate, noise_shape, seed):
    """Alpha dropout: dropped units set to SELU's negative saturation, then an
    affine map that keeps the mean and variance of SELU activations."""
    keep = masks.keep_mask(noise_shape, rate, seed, inputs.dtype)
    alpha_p = -_SELU_ALPHA * _SELU_SCALE
    a = ((1 - rate) * (1 + rate * alpha_p**2)) ** -0.5
    b = -a * alpha_p * rate
    dropped = inputs * keep + alpha_p * (1.0 - keep)
    return a * dropped + b


@keras.saving.register_keras_serializable(package="keras_dropout")
class MCAlphaDropout(SamplingLayer):
    """Alpha dropout (Klambauer et al., 2017), also at inference on request.

    Dropped units are set to SELU's negative saturation value and an affine
    correction keeps zero-mean, unit-variance inputs at zero mean and unit
    variance. Drop-in for `keras.layers.AlphaDropout` that can also sample at
    inference (`always_on=True`, `kd.sampling()`, `kd.predict_mc`).

    Args:
        rate: float in [0, 1), drop probability.
        noise_shape: optional mask shape, as in `MCDropout`.
        seed: optional integer for reproducible training-time masks.
        always_on: if `True`, sample at inference too.

    Call arguments:
        inputs: input tensor of any rank.
        training: Python bool; `True` applies alpha dropout.

    Returns:
        A tensor of the input's shape and dtype.

    Example:

    >>> import numpy as np, keras_dropout as kd
    >>> x = np.random.default_rng(0).normal(size=(100000,)).astype("float32")
    >>> y = np.asarray(kd.layers.MCAlphaDropout(0.2, always_on=True)(x))
    >>> abs(float(y.mean())) < 0.02 and abs(float(y.std()) - 1) < 0.02
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

    def sampled_call(self, inputs, seed):
        shape, seed = batch_shared_noise(self.noise_shape, ops.shape(inputs), seed)
        return alpha_dropout(inputs, self.rate, shape, seed)

    def get_config(self):
        base_config = super().get_config()
        config = {"rate": self.rate, "noise_shape": self.noise_shape}
        return {**base_config, **config}
