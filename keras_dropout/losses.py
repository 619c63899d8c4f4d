"""Losses for heteroscedastic regression: the Gaussian negative log-likelihood.

`GaussianNLL` trains a `kd.layers.GaussianHead` (or any output that
concatenates a mean and a variance or log-variance on its last axis);
`gaussian_nll` is its per-row function.
"""

import math

import keras
from keras import ops

VARIANCE_KINDS = ("variance", "log")
_HALF_LOG_TWO_PI = 0.5 * math.log(2.0 * math.pi)


def gaussian_nll(y_true, y_pred, variance_kind="variance"):
    """Per-row negative log-likelihood of `y_true` under the predicted Gaussians.

    `0.5 * (log(2 pi) + log var + (y - mean)**2 / var)`, summed over the
    `units` outputs of each row. Computed in float32 at least (float64 stays
    float64), so a mixed-precision model's loss does not round; with
    `variance_kind="log"` the log-variance enters directly (`exp(-s)` times
    the squared error, never `log(exp(s))`).

    Args:
        y_true: targets shaped `(..., units)` (or `(batch,)` for one unit).
        y_pred: `(..., 2 * units)`: the means, then the variances (as a
            `kd.layers.GaussianHead` outputs them) or log-variances.
        variance_kind: "variance" or "log": what the second half holds.

    Returns:
        A tensor shaped `y_true.shape[:-1]`: the negative log-likelihood of
        each row, in nats.

    Example:

    >>> import numpy as np, keras_dropout as kd
    >>> nll = kd.losses.gaussian_nll(np.zeros((1, 1)), np.array([[0.0, 1.0]]))
    >>> round(float(nll[0]), 4)  # 0.5 * log(2 pi)
    0.9189
    """
    variance_kind = _check_variance_kind(variance_kind)
    y_pred = _at_least_float32(ops.convert_to_tensor(y_pred))
    y_true = ops.cast(ops.convert_to_tensor(y_true), y_pred.dtype)
    if len(y_true.shape) == len(y_pred.shape) - 1:
        y_true = ops.expand_dims(y_true, -1)  # (batch,) targets of a one-unit head
    units = _check_shapes(y_true, y_pred)
    mean, spread = y_pred[..., :units], y_pred[..., units:]
    squared_error = ops.square(y_true - mean)
    if variance_kind == "log":
        per_unit = spread + squared_error * ops.exp(-spread)
    else:
        per_unit = ops.log(spread) + squared_error / spread
    return ops.sum(0.5 * per_unit + _HALF_LOG_TWO_PI, axis=-1)


@keras.saving.register_keras_serializable(package="keras_dropout")
class GaussianNLL(keras.losses.Loss):
    """Heteroscedastic Gaussian negative log-likelihood (Nix & Weigend 1994).

    The loss of a network that predicts a mean and a variance per output
    (Kendall & Gal 2017, eq. 5 with the constant): minimising it fits the
    mean and lets the predicted variance learn the noise level of each input.
    The full log-likelihood, constant included, so the loss is the test
    negative log-likelihood `kd.metrics.gaussian_mixture_log_likelihood`
    reports for one sample.

    Args:
        variance_kind: "variance" (what `kd.layers.GaussianHead` outputs) or
            "log" (a log-variance head).
        reduction, name, dtype: as in `keras.losses.Loss`. `dtype` defaults
            to float32, also under a mixed-precision policy.

    Call arguments:
        y_true: targets `(batch, units)`.
        y_pred: `(batch, 2 * units)`: means, then variances or
            log-variances.

    Example:

    >>> import numpy as np, keras, keras_dropout as kd
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(8, activation="relu"),
    ...                           kd.layers.MCDropout(0.1), kd.layers.GaussianHead(1)])
    >>> model.compile("adam", loss=kd.losses.GaussianNLL())
    >>> history = model.fit(np.ones((8, 3)), np.ones((8, 1)), epochs=1, verbose=0)
    """

    def __init__(self, variance_kind="variance", reduction="sum_over_batch_size", name="gaussian_nll", dtype=None):
        self.variance_kind = _check_variance_kind(variance_kind)
        super().__init__(name=name, reduction=reduction, dtype=dtype or "float32")

    def call(self, y_true, y_pred):
        return gaussian_nll(y_true, y_pred, self.variance_kind)

    def get_config(self):
        return {**super().get_config(), "variance_kind": self.variance_kind}


def _check_variance_kind(variance_kind):
    if variance_kind not in VARIANCE_KINDS:
        raise ValueError(
            "Invalid value received for argument `variance_kind`. Expected "
            f"'variance' or 'log'. Received: variance_kind={variance_kind!r}"
        )
    return variance_kind


def _at_least_float32(x):
    if keras.backend.standardize_dtype(x.dtype) == "float64":
        return x
    return ops.cast(x, "float32")


def _check_shapes(y_true, y_pred):
    pred_units, true_units = y_pred.shape[-1], y_true.shape[-1]
    if pred_units is None:
        raise ValueError(
            "Invalid value received for argument `y_pred`. Expected a static last "
            f"axis. Received: y_pred.shape={tuple(y_pred.shape)}"
        )
    if pred_units % 2:
        raise ValueError(
            "Invalid value received for argument `y_pred`. Expected a last axis "
            "of 2 * units (the means, then the variances). Received: "
            f"y_pred.shape={tuple(y_pred.shape)}"
        )
    if true_units is not None and pred_units != 2 * true_units:
        raise ValueError(
            "Invalid value received for argument `y_true`. Expected a last axis "
            f"of units={pred_units // 2}, half of y_pred's. Received: "
            f"y_true.shape={tuple(y_true.shape)}, y_pred.shape={tuple(y_pred.shape)}"
        )
    return pred_units // 2
