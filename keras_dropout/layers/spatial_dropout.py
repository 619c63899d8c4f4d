"""MCSpatialDropout1D/2D/3D: drop whole channels, in training and at inference."""

import keras

from keras_dropout.layers.dropout import dropout_multiplier
from keras_dropout.layers.sampling_layer import SamplingLayer
from keras_dropout.layers.sampling_layer import validate_rate


def standardize_data_format(data_format):
    """`data_format`, or Keras' configured default when None; raises if unknown."""
    # keras.backend has no public standardize_data_format; this mirrors
    # keras.src.backend.standardize_data_format.
    if data_format is None:
        return keras.config.image_data_format()
    normalized = str(data_format).lower()
    if normalized not in ("channels_first", "channels_last"):
        raise ValueError(
            "Invalid value received for argument `data_format`. Expected "
            '"channels_first" or "channels_last". '
            f"Received: data_format={data_format!r}"
        )
    return normalized


class BaseMCSpatialDropout(SamplingLayer):
    """Dropout of entire feature maps; subclasses fix the rank."""

    rank = None

    def __init__(self, rate, data_format=None, seed=None, always_on=False, **kwargs):
        self.rate = validate_rate(rate)
        self.data_format = standardize_data_format(data_format)
        super().__init__(seed=seed, always_on=always_on, **kwargs)
        self.input_spec = keras.layers.InputSpec(ndim=self.rank + 2)

    @property
    def is_noisy(self):
        return self.rate > 0

    def _noise_shape(self, shape):
        spatial_ones = (1,) * self.rank
        if self.data_format == "channels_first":
            return (shape[0], shape[1]) + spatial_ones
        return (shape[0],) + spatial_ones + (shape[-1],)

    def sampled_multiplier(self, input_shape, dtype, seed):
        return dropout_multiplier(self.rate, self._noise_shape(input_shape), seed, dtype)

    def get_config(self):
        base_config = super().get_config()
        config = {"rate": self.rate, "data_format": self.data_format}
        return {**base_config, **config}


@keras.saving.register_keras_serializable(package="keras_dropout")
class MCSpatialDropout1D(BaseMCSpatialDropout):
    """Spatial 1D dropout: drops whole channels of `(batch, steps, channels)`.

    Drop-in for `keras.layers.SpatialDropout1D`, which can also sample at
    inference (`always_on=True`, `kd.sampling()`, `kd.predict_mc`).

    Args:
        rate: float in [0, 1), fraction of channels to drop.
        seed: optional integer for reproducible training-time masks.
        always_on: if `True`, sample at inference too.

    Call arguments:
        inputs: a 3D tensor `(batch, steps, channels)`.
        training: Python bool; `True` applies dropout.

    Returns:
        A tensor of the input's shape.

    Example:

    >>> import numpy as np, keras_dropout as kd
    >>> y = kd.layers.MCSpatialDropout1D(0.5, always_on=True)(np.ones((1, 5, 3), "float32"))
    >>> bool((np.asarray(y).std(axis=1) == 0).all())   # constant along steps
    True
    """

    rank = 1

    def __init__(self, rate, seed=None, always_on=False, **kwargs):
        # Keras' SpatialDropout1D has no data_format: always channels last.
        kwargs.pop("data_format", None)
        super().__init__(rate, "channels_last", seed=seed, always_on=always_on, **kwargs)

    def get_config(self):
        config = super().get_config()
        config.pop("data_format")
        return config


@keras.saving.register_keras_serializable(package="keras_dropout")
class MCSpatialDropout2D(BaseMCSpatialDropout):
    """Spatial 2D dropout: drops whole 2D feature maps.

    Drop-in for `keras.layers.SpatialDropout2D`, which can also sample at
    inference (`always_on=True`, `kd.sampling()`, `kd.predict_mc`).

    Args:
        rate: float in [0, 1), fraction of channels to drop.
        data_format: `"channels_last"` (default from the Keras config) or
            `"channels_first"`.
        seed: optional integer for reproducible training-time masks.
        always_on: if `True`, sample at inference too.

    Call arguments:
        inputs: a 4D tensor.
        training: Python bool; `True` applies dropout.

    Returns:
        A tensor of the input's shape.

    Example:

    >>> import numpy as np, keras_dropout as kd
    >>> y = kd.layers.MCSpatialDropout2D(0.5, always_on=True)(np.ones((1, 4, 4, 3), "float32"))
    >>> np.asarray(y).shape
    (1, 4, 4, 3)
    """

    rank = 2


@keras.saving.register_keras_serializable(package="keras_dropout")
class MCSpatialDropout3D(BaseMCSpatialDropout):
    """Spatial 3D dropout: drops whole 3D feature maps.

    Drop-in for `keras.layers.SpatialDropout3D`, which can also sample at
    inference (`always_on=True`, `kd.sampling()`, `kd.predict_mc`).

    Args:
        rate: float in [0, 1), fraction of channels to drop.
        data_format: `"channels_last"` (default from the Keras config) or
            `"channels_first"`.
        seed: optional integer for reproducible training-time masks.
        always_on: if `True`, sample at inference too.

    Call arguments:
        inputs: a 5D tensor.
        training: Python bool; `True` applies dropout.

    Returns:
        A tensor of the input's shape.

    Example:

    >>> import numpy as np, keras_dropout as kd
    >>> y = kd.layers.MCSpatialDropout3D(0.5, always_on=True)(np.ones((1, 2, 2, 2, 3), "float32"))
    >>> np.asarray(y).shape
    (1, 2, 2, 2, 3)
    """

    rank = 3
