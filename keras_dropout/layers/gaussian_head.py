"""GaussianHead: a dense output layer predicting a Gaussian's mean and variance."""

import math
import numbers

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_dropout")
class GaussianHead(keras.layers.Layer):
    """Dense output layer for heteroscedastic regression: a mean and a variance per unit.

    Computes `z = inputs @ kernel + bias` with `2 * units` columns and returns
    `concat([mean, variance], axis=-1)`, where `mean = z[..., :units]` and
    `variance = softplus(z[..., units:]) + min_variance` (Nix & Weigend
    1994; Kendall & Gal 2017; softplus rather than `exp`, whose gradient
    explodes for large log-variances). Train it with `kd.losses.GaussianNLL`.
    `kd.predict_mc`, `kd.predict_moments` and the serving signatures
    recognise the layer and split the predictive variance into its
    aleatoric part (the mean of the predicted variances) and its epistemic
    part (the variance of the predicted means over dropout samples).

    Under a mixed-precision policy the variance is computed, and both halves
    returned, in float32: a float16 softplus rounds small variances to 0 and
    `min_variance` below float16's resolution.

    Args:
        units: positive int, the number of Gaussian outputs.
        min_variance: float > 0, the variance floor.
        kernel_initializer, bias_initializer, kernel_regularizer,
        bias_regularizer, kernel_constraint, bias_constraint: as in
            `keras.layers.Dense`.

    Call arguments:
        inputs: tensor `(..., input_dim)`.

    Returns:
        A tensor `(..., 2 * units)`: the means, then the variances.

    Example:

    >>> import numpy as np, keras, keras_dropout as kd
    >>> head = kd.layers.GaussianHead(3)
    >>> outputs = keras.ops.convert_to_numpy(head(np.ones((2, 4), "float32")))
    >>> outputs.shape, bool((outputs[:, 3:] > 0).all())
    ((2, 6), True)
    """

    def __init__(
        self,
        units,
        min_variance=1e-6,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        **kwargs,
    ):
        if isinstance(units, bool) or not isinstance(units, numbers.Integral) or units <= 0:
            raise ValueError(
                "Invalid value received for argument `units`. Expected a "
                f"positive integer. Received: units={units!r}"
            )
        if (
            isinstance(min_variance, bool)
            or not isinstance(min_variance, numbers.Real)
            or not math.isfinite(min_variance)
            or min_variance <= 0
        ):
            raise ValueError(
                "Invalid value received for argument `min_variance`. Expected a "
                f"finite float > 0. Received: min_variance={min_variance!r}"
            )
        super().__init__(**kwargs)
        self.units = int(units)
        self.min_variance = float(min_variance)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.kernel_constraint = keras.constraints.get(kernel_constraint)
        self.bias_constraint = keras.constraints.get(bias_constraint)
        self.input_spec = keras.layers.InputSpec(min_ndim=2)
        self.supports_masking = True  # as keras.layers.Dense: a mask passes through

    def build(self, input_shape):
        input_dim = input_shape[-1]
        self.kernel = self.add_weight(
            name="kernel",
            shape=(input_dim, 2 * self.units),
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
            constraint=self.kernel_constraint,
        )
        self.bias = self.add_weight(
            name="bias",
            shape=(2 * self.units,),
            initializer=self.bias_initializer,
            regularizer=self.bias_regularizer,
            constraint=self.bias_constraint,
        )
        self.input_spec = keras.layers.InputSpec(min_ndim=2, axes={-1: input_dim})

    def call(self, inputs):
        return self.parameters(ops.matmul(inputs, self.kernel) + self.bias)

    def parameters(self, pre_activation):
        """`(mean, variance)` concatenated, from the `2 * units` pre-activations."""
        if keras.backend.standardize_dtype(pre_activation.dtype) in ("float16", "bfloat16"):
            pre_activation = ops.cast(pre_activation, "float32")
        mean = pre_activation[..., : self.units]
        variance = self.variance_of(pre_activation[..., self.units :])
        return ops.concatenate([mean, variance], axis=-1)

    def variance_of(self, raw):
        """The positive variance of the raw (pre-activation) variance columns."""
        return ops.softplus(raw) + ops.cast(self.min_variance, raw.dtype)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (2 * self.units,)

    def compute_output_spec(self, inputs):
        dtype = self.compute_dtype
        if keras.backend.standardize_dtype(dtype) in ("float16", "bfloat16"):
            dtype = "float32"
        return keras.KerasTensor(self.compute_output_shape(inputs.shape), dtype=dtype)

    def get_config(self):
        base_config = super().get_config()
        config = {
            "units": self.units,
            "min_variance": self.min_variance,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
            "bias_regularizer": keras.regularizers.serialize(self.bias_regularizer),
            "kernel_constraint": keras.constraints.serialize(self.kernel_constraint),
            "bias_constraint": keras.constraints.serialize(self.bias_constraint),
        }
        return {**base_config, **config}

