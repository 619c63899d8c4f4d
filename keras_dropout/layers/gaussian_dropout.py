"""MCGaussianDropout: multiplicative 1-centred Gaussian noise."""

import math

import keras

from keras_dropout import masks
from keras_dropout.layers.sampling_layer import SamplingLayer
from keras_dropout.layers.sampling_layer import validate_rate


def gaussian_dropout(inputs, rate, seed):
    """`inputs` times multiplicative noise N(1, rate / (1 - rate))."""
    return inputs * gaussian_multiplier(rate, keras.ops.shape(inputs), seed, inputs.dtype)


def gaussian_multiplier(rate, shape, seed, dtype):
    """The multiplicative noise of `gaussian_dropout`, `1 + stddev * N(0, 1)`."""
    stddev = math.sqrt(rate / (1.0 - rate))
    return 1.0 + stddev * masks.normal(shape, seed, dtype)


@keras.saving.register_keras_serializable(package="keras_dropout")
class MCGaussianDropout(SamplingLayer):
    """Multiplies the input by noise drawn from N(1, rate / (1 - rate)).

    Drop-in for `keras.layers.GaussianDropout` (the noise has the variance of
    Bernoulli dropout at the same `rate`), which can also sample at
    inference (`always_on=True`, `kd.sampling()`, `kd.predict_mc`).

    Args:
        rate: float in [0, 1), the equivalent drop probability.
        seed: optional integer for reproducible training-time noise.
        always_on: if `True`, sample at inference too.

    Call arguments:
        inputs: input tensor of any rank.
        training: Python bool; `True` applies the noise.

    Returns:
        A tensor of the input's shape and dtype.

    Example:

    >>> import numpy as np, keras_dropout as kd
    >>> y = kd.layers.MCGaussianDropout(0.2, always_on=True)(np.ones((1000,), "float32"))
    >>> 0.9 < float(np.asarray(y).mean()) < 1.1
    True
    """

    def __init__(self, rate, seed=None, always_on=False, **kwargs):
        self.rate = validate_rate(rate)
        super().__init__(seed=seed, always_on=always_on, **kwargs)

    @property
    def is_noisy(self):
        return self.rate > 0

    def sampled_multiplier(self, input_shape, dtype, seed):
        return gaussian_multiplier(self.rate, input_shape, seed, dtype)

    def get_config(self):
        base_config = super().get_config()
        return {**base_config, "rate": self.rate}
