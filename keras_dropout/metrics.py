"""Calibration and likelihood metrics for (MC-averaged) predictions.

Two flavours of each quantity:

- Functions (`expected_calibration_error`, `negative_log_likelihood`,
  `brier_score`, `gaussian_mixture_log_likelihood`) take array-likes and
  compute in float64 NumPy. They are meant for evaluation reports, where the
  last digits matter: `keras.ops` would silently compute in float32 under the
  JAX backend (x64 is off by default). They validate their inputs and raise
  `ValueError` on malformed ones.
- Keras metric classes (`ExpectedCalibrationError`, `BrierScore`,
  `NegativeLogLikelihood`) for `model.compile(metrics=[...])`. They accumulate
  streaming state in Keras variables with `keras.ops`, in the metric's dtype
  (float32 by default), and run inside compiled train/eval steps, so they check
  shapes but cannot check values.

Classification inputs: `probs` shaped `(N, classes)`; binary probabilities
shaped `(N,)` or `(N, 1)` are P(class 1) and are expanded to the two columns
`[1 - p, p]`. Labels `y_true` are integer class indices shaped `(N,)` or
`(N, 1)`, or one-hot rows shaped `(N, classes)`.
"""

import math

import keras
import numpy as np
from keras import ops


def expected_calibration_error(y_true, probs, num_bins=15):
    """Expected calibration error (ECE) of classification probabilities.

    Confidence is the largest probability of a row and the prediction its
    argmax. Rows are grouped into `num_bins` equal-width confidence bins that
    are closed on the right: bin `k` holds confidences in
    `(k / num_bins, (k + 1) / num_bins]`, and a confidence of exactly 0 goes in
    the first bin. Then

    `ECE = sum_k |B_k| / N * |accuracy(B_k) - mean confidence(B_k)|`,

    with empty bins contributing nothing (Naeini et al. 2015; Guo et al. 2017).

    Args:
        y_true: Integer labels shaped `(N,)` or `(N, 1)`, or one-hot labels
            shaped `(N, classes)`.
        probs: Probabilities shaped `(N, classes)`, or `(N,)` / `(N, 1)` for
            P(class 1) of a binary problem.
        num_bins: Positive integer, the number of confidence bins.
            Defaults to 15.

    Returns:
        Python float in `[0, 1]`.

    Example:

    ```python
    probs = [[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]]
    kd.metrics.expected_calibration_error([0, 1, 1], probs, num_bins=5)
    # Bins (0.8, 1], (0.4, 0.6], (0.6, 0.8]:
    # (|1 - 0.9| + |0 - 0.6| + |1 - 0.8|) / 3 = 0.3
    ```
    """
    num_bins = _check_num_bins(num_bins)
    probs = _to_probability_matrix(probs)
    labels = _to_label_indices(y_true, probs)
    confidence = np.max(probs, axis=1)
    correct = (np.argmax(probs, axis=1) == labels).astype("float64")
    # `k / num_bins` is the correctly rounded edge, so a confidence written
    # as the same decimal (0.7 with 10 bins) lands in the bin it closes;
    # `ceil(confidence * num_bins)` would misplace it (0.7 * 10 > 7).
    edges = np.arange(num_bins + 1, dtype="float64") / num_bins
    bins = np.searchsorted(edges, confidence, side="left") - 1
    bins = np.clip(bins, 0, num_bins - 1)
    confidence_sums = np.bincount(bins, confidence, minlength=num_bins)
    correct_sums = np.bincount(bins, correct, minlength=num_bins)
    gaps = np.abs(correct_sums - confidence_sums)
    return float(np.sum(gaps) / probs.shape[0])


def negative_log_likelihood(y_true, probs, eps=1e-12):
    """Mean negative log-likelihood of the true classes.

    `mean_i -log(max(probs[i, y_i], eps))`, in nats.

    Args:
        y_true: Integer labels shaped `(N,)` or `(N, 1)`, or one-hot labels
            shaped `(N, classes)`.
        probs: Probabilities shaped `(N, classes)`, or `(N,)` / `(N, 1)` for
            P(class 1) of a binary problem.
        eps: Float in `(0, 1)`, the smallest probability used in the log, so
            that a confidently wrong prediction costs `-log(eps)` instead of
            infinity. Defaults to `1e-12`.

    Returns:
        Python float.

    Example:

    ```python
    kd.metrics.negative_log_likelihood([0, 1], [[0.5, 0.5], [0.2, 0.8]])
    # (log(2) - log(0.8)) / 2 = 0.458
    ```
    """
    eps = _check_eps(eps)
    probs = _to_probability_matrix(probs)
    labels = _to_label_indices(y_true, probs)
    true_probs = probs[np.arange(probs.shape[0]), labels]
    return float(-np.mean(np.log(np.maximum(true_probs, eps))))


def brier_score(y_true, probs):
    """Multi-class Brier score.

    `mean_i sum_c (probs[i, c] - onehot(y_i)[c]) ** 2` (Brier 1950), in
    `[0, 2]`. Binary probabilities are expanded to two columns first, so for
    them this is twice the single-column `mean_i (p_i - y_i) ** 2` that
    `sklearn.metrics.brier_score_loss` reports.

    Args:
        y_true: Integer labels shaped `(N,)` or `(N, 1)`, or one-hot labels
            shaped `(N, classes)`.
        probs: Probabilities shaped `(N, classes)`, or `(N,)` / `(N, 1)` for
            P(class 1) of a binary problem.

    Returns:
        Python float.

    Example:

    ```python
    kd.metrics.brier_score([0, 1], [[0.5, 0.5], [0.2, 0.8]])
    # ((0.25 + 0.25) + (0.04 + 0.04)) / 2 = 0.29
    ```
    """
    probs = _to_probability_matrix(probs)
    labels = _to_label_indices(y_true, probs)
    one_hot = np.eye(probs.shape[1], dtype="float64")[labels]
    return float(np.mean(np.sum((probs - one_hot) ** 2, axis=1)))


def gaussian_mixture_log_likelihood(y, samples, tau=None, *, variances=None):
    """Per-row test log-likelihood of regression targets under MC dropout.

    The predictive distribution of MC dropout is a mixture of `T` Gaussians
    centred on the samples `yhat_t` with precision `tau` (Gal & Ghahramani
    2016, eq. 8):

    `log p(y) = logsumexp_t(-tau / 2 * (y - yhat_t) ** 2) - log T
    - 0.5 * log(2 pi) + 0.5 * log(tau)`.

    A heteroscedastic model predicts each sample's variance `sigma_t**2`
    itself (`kd.layers.GaussianHead`): pass them as `variances`, and the
    mixture's components are `N(yhat_t, sigma_t**2)` (plus `1 / tau` when
    `tau` is given too).

    With several output dimensions each one is treated as an independent
    mixture and their log-likelihoods are summed.

    Args:
        y: Targets shaped `(N,)` or `(N, D)`.
        samples: MC samples shaped `(N, T)` or `(N, T, D)`.
        tau: Positive float, the model precision (inverse observation noise
            variance). Required unless `variances` is given.
        variances: Optional per-sample predicted variances, shaped like
            `samples`, all > 0 (or >= 0 with `tau`).

    Returns:
        Float64 NumPy array shaped `(N,)`: the log-likelihood of each row.
        Average it for the usual "test log-likelihood" figure.

    Example:

    ```python
    samples = np.random.normal(size=(100, 50))  # 100 rows, 50 MC samples
    ll = kd.metrics.gaussian_mixture_log_likelihood(y, samples, tau=1.0)
    ll = kd.metrics.gaussian_mixture_log_likelihood(y, samples, variances=predicted)
    ll.mean()
    ```
    """
    if tau is None and variances is None:
        raise ValueError(
            "gaussian_mixture_log_likelihood needs the components' noise: pass `tau` "
            "(a constant precision) or `variances` (each sample's predicted variance)."
        )
    if tau is not None:
        tau = _check_tau(tau)
    samples = _to_finite_float64(samples, "samples")
    y = _to_finite_float64(y, "y")
    received = f"samples.shape={samples.shape}"
    if variances is not None:
        variances = _to_finite_float64(variances, "variances")
        if variances.shape != samples.shape:
            raise ValueError(
                "Invalid value received for argument `variances`. Expected the shape "
                f"of `samples`, {samples.shape}. Received: variances.shape={variances.shape}"
            )
        if (variances < 0).any() or (tau is None and (variances <= 0).any()):
            raise ValueError(
                "Invalid value received for argument `variances`. Expected values > 0 "
                f"(>= 0 with tau). Received a minimum of {variances.min()!r}"
            )
    if samples.ndim == 2:
        samples = samples[:, :, np.newaxis]
        variances = None if variances is None else variances[:, :, np.newaxis]
    if samples.ndim != 3 or samples.shape[0] == 0 or samples.shape[1] == 0:
        raise ValueError(
            "Invalid value received for argument `samples`. Expected a "
            f"non-empty array shaped (N, T) or (N, T, D). Received: {received}"
        )
    num_rows, num_samples, num_dims = samples.shape
    expected = (num_rows,) if num_dims == 1 else (num_rows, num_dims)
    if y.shape not in (expected, (num_rows, num_dims)):
        raise ValueError(
            "Invalid value received for argument `y`. Expected shape "
            f"{expected} to match {received}. Received: y.shape={y.shape}"
        )
    y = y.reshape(num_rows, num_dims)
    if variances is None:
        component_variance = np.full((1, 1, 1), 1.0 / tau)
    else:
        component_variance = variances + (0.0 if tau is None else 1.0 / tau)
    exponents = -0.5 * (y[:, np.newaxis, :] - samples) ** 2 / component_variance - 0.5 * np.log(
        component_variance
    )
    # Max-shifted logsumexp: with a large tau every exponent can underflow
    # exp() to 0, which would turn the log-likelihood into -inf.
    shift = np.max(exponents, axis=1)
    log_sum = shift + np.log(np.sum(np.exp(exponents - shift[:, np.newaxis, :]), axis=1))
    per_dim = log_sum - math.log(num_samples) - 0.5 * math.log(2.0 * math.pi)
    return np.sum(per_dim, axis=1)


@keras.saving.register_keras_serializable(package="keras_dropout")
class ExpectedCalibrationError(keras.metrics.Metric):
    """Streaming expected calibration error, for `model.compile`.

    Same definition as `keras_dropout.metrics.expected_calibration_error`
    (right-closed equal-width bins), accumulated exactly over batches: the
    state is the per-bin weighted count, confidence sum and number of correct
    predictions, so the result after several `update_state` calls equals the
    ECE of all rows at once. Computed in the metric's dtype (float32 by
    default); use the function for a float64 figure.

    Args:
        num_bins: Positive integer, the number of confidence bins.
            Defaults to 15.
        name: (Optional) string name of the metric instance.
        dtype: (Optional) data type of the metric result.

    Example:

    ```python
    model.compile(
        optimizer="adam",
        loss="sparse_categorical_crossentropy",
        metrics=[kd.metrics.ExpectedCalibrationError(num_bins=10)],
    )
    ```
    """

    def __init__(
        self, num_bins=15, name="expected_calibration_error", dtype=None
    ):
        super().__init__(name=name, dtype=dtype)
        self.num_bins = _check_num_bins(num_bins)
        self._direction = "down"
        self.bin_counts = self.add_variable(
            shape=(self.num_bins,),
            initializer="zeros",
            dtype=self.dtype,
            name="bin_counts",
        )
        self.bin_confidence_sums = self.add_variable(
            shape=(self.num_bins,),
            initializer="zeros",
            dtype=self.dtype,
            name="bin_confidence_sums",
        )
        self.bin_correct_sums = self.add_variable(
            shape=(self.num_bins,),
            initializer="zeros",
            dtype=self.dtype,
            name="bin_correct_sums",
        )

    def update_state(self, y_true, y_pred, sample_weight=None):
        probs, labels = _prepare_classification(y_true, y_pred, self.dtype)
        confidence = ops.max(probs, axis=-1)
        predicted = ops.cast(ops.argmax(probs, axis=-1), "int32")
        correct = ops.cast(ops.equal(predicted, labels), self.dtype)
        # A row's bin is the number of interior edges strictly below its
        # confidence: right-closed bins, and 0 falls in the first one.
        interior = np.arange(1, self.num_bins, dtype="float64") / self.num_bins
        interior = ops.convert_to_tensor(interior, dtype=self.dtype)
        below = ops.greater(
            ops.expand_dims(confidence, -1), ops.expand_dims(interior, 0)
        )
        bins = ops.sum(ops.cast(below, "int32"), axis=-1)
        membership = ops.one_hot(bins, self.num_bins, dtype=self.dtype)
        if sample_weight is not None:
            weights = ops.reshape(ops.cast(sample_weight, self.dtype), (-1,))
            membership = membership * ops.expand_dims(weights, -1)
        self.bin_counts.assign_add(ops.sum(membership, axis=0))
        self.bin_confidence_sums.assign_add(
            ops.sum(membership * ops.expand_dims(confidence, -1), axis=0)
        )
        self.bin_correct_sums.assign_add(
            ops.sum(membership * ops.expand_dims(correct, -1), axis=0)
        )

    def result(self):
        gaps = ops.abs(self.bin_correct_sums - self.bin_confidence_sums)
        return ops.divide_no_nan(ops.sum(gaps), ops.sum(self.bin_counts))

    def get_config(self):
        base_config = super().get_config()
        config = {"num_bins": self.num_bins}
        return {**base_config, **config}


@keras.saving.register_keras_serializable(package="keras_dropout")
class BrierScore(keras.metrics.MeanMetricWrapper):
    """Streaming multi-class Brier score, for `model.compile`.

    Same definition as `keras_dropout.metrics.brier_score` (sum over classes,
    mean over rows; a single sigmoid unit is expanded to two columns), in the
    metric's dtype (float32 by default).

    Args:
        name: (Optional) string name of the metric instance.
        dtype: (Optional) data type of the metric result.

    Example:

    ```python
    model.compile(
        optimizer="adam",
        loss="sparse_categorical_crossentropy",
        metrics=[kd.metrics.BrierScore()],
    )
    ```
    """

    def __init__(self, name="brier_score", dtype=None):
        super().__init__(fn=_brier_score_per_row, name=name, dtype=dtype)
        self._direction = "down"

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype}


@keras.saving.register_keras_serializable(package="keras_dropout")
class NegativeLogLikelihood(keras.metrics.MeanMetricWrapper):
    """Streaming negative log-likelihood of the true class, for `compile`.

    Same definition as `keras_dropout.metrics.negative_log_likelihood`, in the
    metric's dtype (float32 by default).

    Args:
        eps: Float in `(0, 1)`, the smallest probability used in the log.
            Defaults to `1e-12`.
        name: (Optional) string name of the metric instance.
        dtype: (Optional) data type of the metric result.

    Example:

    ```python
    model.compile(
        optimizer="adam",
        loss="sparse_categorical_crossentropy",
        metrics=[kd.metrics.NegativeLogLikelihood()],
    )
    ```
    """

    def __init__(self, eps=1e-12, name="negative_log_likelihood", dtype=None):
        eps = _check_eps(eps)
        super().__init__(
            fn=_negative_log_likelihood_per_row,
            name=name,
            dtype=dtype,
            eps=eps,
        )
        self.eps = eps
        self._direction = "down"

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype, "eps": self.eps}


def _brier_score_per_row(y_true, y_pred):
    probs, labels = _prepare_classification(y_true, y_pred)
    one_hot = ops.one_hot(labels, probs.shape[-1], dtype=probs.dtype)
    return ops.sum(ops.square(probs - one_hot), axis=-1)


def _negative_log_likelihood_per_row(y_true, y_pred, eps):
    probs, labels = _prepare_classification(y_true, y_pred)
    one_hot = ops.one_hot(labels, probs.shape[-1], dtype=probs.dtype)
    true_probs = ops.sum(probs * one_hot, axis=-1)
    return -ops.log(ops.maximum(true_probs, eps))


def _prepare_classification(y_true, y_pred, dtype=None):
    # Graph-friendly counterpart of `_to_probability_matrix` and
    # `_to_label_indices`: shapes are checked statically, values cannot be.
    y_pred = ops.convert_to_tensor(y_pred)
    if dtype is None:
        # At least float32: in float16 the log of `eps` would be -inf.
        dtype = keras.backend.standardize_dtype(y_pred.dtype)
        dtype = "float64" if dtype == "float64" else "float32"
    probs = ops.cast(y_pred, dtype)
    if len(probs.shape) == 1:
        probs = ops.expand_dims(probs, -1)
    if len(probs.shape) != 2 or probs.shape[-1] is None:
        raise ValueError(
            "Invalid value received for argument `y_pred`. Expected "
            "probabilities shaped (N, classes), (N, 1) or (N,) with a static "
            f"class axis. Received: y_pred.shape={tuple(y_pred.shape)}"
        )
    if probs.shape[-1] == 1:
        probs = ops.concatenate([1.0 - probs, probs], axis=-1)
    num_classes = probs.shape[-1]
    y_true = ops.convert_to_tensor(y_true)
    if len(y_true.shape) == 2 and y_true.shape[-1] == num_classes:
        labels = ops.argmax(y_true, axis=-1)
    elif len(y_true.shape) == 1 or (
        len(y_true.shape) == 2 and y_true.shape[-1] == 1
    ):
        labels = ops.reshape(y_true, (-1,))
    else:
        raise ValueError(
            "Invalid value received for argument `y_true`. Expected integer "
            f"labels shaped (N,) or (N, 1), or one-hot labels shaped "
            f"(N, {num_classes}). Received: y_true.shape={tuple(y_true.shape)}"
        )
    return probs, ops.cast(labels, "int32")


def _to_probability_matrix(probs):
    probs = _to_finite_float64(probs, "probs")
    if probs.ndim == 1:
        probs = probs[:, np.newaxis]
    if probs.ndim != 2 or probs.shape[0] == 0:
        raise ValueError(
            "Invalid value received for argument `probs`. Expected a "
            "non-empty array shaped (N, classes), (N, 1) or (N,). Received: "
            f"probs.shape={probs.shape}"
        )
    outside = (probs < 0.0) | (probs > 1.0)
    if np.any(outside):
        raise ValueError(
            "Invalid value received for argument `probs`. Expected "
            "probabilities in [0, 1]. Received a value of "
            f"{probs[outside][0]} at index "
            f"{tuple(int(i) for i in np.argwhere(outside)[0])}"
        )
    if probs.shape[1] == 1:
        probs = np.concatenate([1.0 - probs, probs], axis=1)
    return probs


def _to_label_indices(y_true, probs):
    num_rows, num_classes = probs.shape
    y_true = _to_finite_float64(y_true, "y_true")
    if y_true.shape[:1] != (num_rows,):
        raise ValueError(
            "Invalid value received for argument `y_true`. Expected one label "
            f"per row of probs ({num_rows} rows). Received: "
            f"y_true.shape={y_true.shape}"
        )
    if y_true.ndim == 2 and y_true.shape[1] == num_classes:
        is_one_hot = np.all((y_true == 0.0) | (y_true == 1.0)) and np.all(
            np.sum(y_true, axis=1) == 1.0
        )
        if not is_one_hot:
            raise ValueError(
                "Invalid value received for argument `y_true`. Expected "
                "one-hot rows (a single 1, zeros elsewhere) for labels shaped "
                f"(N, {num_classes}). Received: y_true={_preview(y_true)}"
            )
        return np.argmax(y_true, axis=1)
    if y_true.ndim == 2 and y_true.shape[1] == 1:
        y_true = y_true[:, 0]
    if y_true.ndim != 1:
        raise ValueError(
            "Invalid value received for argument `y_true`. Expected integer "
            "labels shaped (N,) or (N, 1), or one-hot labels shaped "
            f"(N, {num_classes}). Received: y_true.shape={y_true.shape}"
        )
    valid = (y_true == np.round(y_true)) & (y_true >= 0)
    valid &= y_true < num_classes
    if not np.all(valid):
        raise ValueError(
            "Invalid value received for argument `y_true`. Expected integer "
            f"labels in [0, {num_classes - 1}]. Received a label of "
            f"{y_true[~valid][0]}"
        )
    return y_true.astype("int64")


def _to_finite_float64(x, name):
    try:
        x = np.asarray(x, dtype="float64")
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected a "
            f"numeric array. Received: {name}={x!r}"
        ) from error
    if not np.all(np.isfinite(x)):
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected finite "
            f"values. Received NaN or inf: {name}={_preview(x)}"
        )
    return x


def _preview(x):
    return np.array2string(x, threshold=10, edgeitems=2)


def _check_num_bins(num_bins):
    if (
        isinstance(num_bins, bool)
        or not isinstance(num_bins, (int, np.integer))
        or num_bins < 1
    ):
        raise ValueError(
            "Invalid value received for argument `num_bins`. Expected a "
            f"positive integer. Received: num_bins={num_bins!r}"
        )
    return int(num_bins)


def _check_eps(eps):
    if (
        isinstance(eps, bool)
        or not isinstance(eps, (int, float, np.floating))
        or not 0 < eps < 1
    ):
        raise ValueError(
            "Invalid value received for argument `eps`. Expected a float in "
            f"(0, 1). Received: eps={eps!r}"
        )
    return float(eps)


def _check_tau(tau):
    if (
        isinstance(tau, bool)
        or not isinstance(tau, (int, float, np.number))
        or not math.isfinite(tau)
        or tau <= 0
    ):
        raise ValueError(
            "Invalid value received for argument `tau`. Expected a positive "
            f"finite float. Received: tau={tau!r}"
        )
    return float(tau)
