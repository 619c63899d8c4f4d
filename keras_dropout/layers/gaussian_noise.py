"""MCGaussianNoise: additive zero-centred Gaussian noise."""

import keras

from keras_dropout import masks
from keras_dropout.layers.sampling_layer import SamplingLayer
from keras_dropout.layers.sampling_layer import validate_stddev


def gaussian_noise(inputs, stddev, seed):
    """`inputs` plus additive noise N(0, stddev**2)."""
    return inputs + stddev * masks.normal(keras.ops.shape(inputs), seed, inputs.dtype)


@keras.saving.register_keras_serializable(package="keras_dropout")
class MCGaussianNoise(SamplingLayer):
    """Adds N(0, stddev^2) noise to the input.

    Drop-in for `keras.layers.GaussianNoise` that also samples at inference
    (`always_on=True`, `kd.sampling()`, `kd.predict_mc`). Any finite
    `stddev >= 0` is accepted (Keras caps it at 1).

    Args:
        stddev: standard deviation of the noise, a finite float >= 0.
        seed: optional integer for reproducible training-time noise.
        always_on: if `True`, sample at inference too.

    Call arguments:
        inputs: input tensor of any rank.
        training: Python bool; `True` applies the noise.

    Returns:
        A tensor of the input's shape and dtype.

    Example:

    >>> import numpy as np, keras_dropout as kd
    >>> y = kd.layers.MCGaussianNoise(2.0, always_on=True)(np.zeros((10000,), "float32"))
    >>> 1.9 < float(np.asarray(y).std()) < 2.1
    True
    """

    def __init__(self, stddev, seed=None, always_on=False, **kwargs):
        self.stddev = validate_stddev(stddev)
        super().__init__(seed=seed, always_on=always_on, **kwargs)

    @property
    def is_noisy(self):
        return self.stddev > 0

    def sampled_call(self, inputs, seed):
        return gaussian_noise(inputs, self.stddev, seed)

    def get_config(self):
        base_config = super().get_config()
        return {**base_config, "stddev": self.stddev}
