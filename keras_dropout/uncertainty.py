"""Uncertainty measures of Monte Carlo samples.

Every function here takes MC samples shaped `(batch, samples, ...)`: the batch
axis first, the MC sample axis second. They are written with `keras.ops` only,
so the same code runs eagerly, inside `tf.function` / SavedModel signatures and
under `jax.jit`. `MCPrediction` and the MC serving signatures call these
functions; there is no second implementation.

Inputs may be any backend tensor, a `KerasTensor` or a NumPy array. Integer and
half-precision inputs are computed in `float32` (logarithms of small
probabilities underflow in `float16`); `float64` inputs stay `float64` where
the backend supports it.

Classification measures take probabilities shaped `(batch, samples, classes)`
(more axes between `samples` and `classes` are allowed, e.g. per-pixel
classes). With `multilabel=True` every entry of the last axis is the
probability of an independent Bernoulli label, and the measures are returned
per label. A last axis of size 1 is a single sigmoid unit: binary
classification, treated as multi-label with one label whatever `multilabel`
says. Entropies are in nats.
"""

import math

import keras
import numpy as np
from keras import ops


def predictive_mean(samples):
    """Mean of the MC samples.

    Args:
        samples: Tensor shaped `(batch, samples, ...)`.

    Returns:
        Tensor shaped `(batch, ...)`: the mean over axis 1.

    Example:

    ```python
    samples = np.array([[[1.0], [3.0]]])  # batch 1, 2 samples, 1 output
    kd.uncertainty.predictive_mean(samples)  # [[2.0]]
    ```
    """
    samples = _to_float_tensor(samples, "samples", min_rank=2)
    return ops.mean(samples, axis=1)


def predictive_variance(samples, tau=None):
    """Variance of the MC samples, optionally plus the model precision.

    The sample variance uses `ddof=0` (divides by the number of samples). When
    `tau` is given, `1 / tau` is added: the predictive variance of a network
    trained with dropout and weight decay (Gal & Ghahramani 2016, eq. 7), where
    `tau` is the model precision (inverse observation noise).

    Args:
        samples: Tensor shaped `(batch, samples, ...)`.
        tau: Optional positive float, the model precision. `None` (default)
            returns the sample variance alone.

    Returns:
        Tensor shaped `(batch, ...)`.

    Example:

    ```python
    samples = np.array([[[1.0], [3.0]]])
    kd.uncertainty.predictive_variance(samples, tau=4.0)  # [[1.0 + 0.25]]
    ```
    """
    samples = _to_float_tensor(samples, "samples", min_rank=2)
    return _plus_noise(ops.var(samples, axis=1), tau)


def _plus_noise(variance, tau):
    """`variance + 1 / tau` (the observation noise), or `variance` when `tau` is None."""
    if tau is None:
        return variance
    _check_positive_number(tau, "tau")
    return variance + ops.divide(1.0, ops.cast(tau, variance.dtype))


def probabilities_from_logits(logits, multilabel=False):
    """Turns per-sample logits into per-sample probabilities.

    Applies softmax over the last axis, or a sigmoid to every entry when
    `multilabel=True` or the last axis has size 1 (a single binary unit, for
    which a softmax would always return 1). Apply this to each sample before
    averaging: probabilities are averaged over samples, never logits.

    Args:
        logits: Tensor shaped `(batch, samples, ..., classes)`.
        multilabel: Whether the last axis holds independent binary labels.

    Returns:
        Tensor of probabilities, same shape as `logits`.

    Example:

    ```python
    logits = np.zeros((2, 10, 4))  # batch 2, 10 samples, 4 classes
    probs = kd.uncertainty.probabilities_from_logits(logits)
    kd.uncertainty.predictive_entropy(probs)  # [log(4), log(4)]
    ```
    """
    logits = _to_float_tensor(logits, "logits", min_rank=3)
    if _is_bernoulli(logits, _check_multilabel(multilabel)):
        return ops.sigmoid(logits)
    return ops.softmax(logits, axis=-1)


def predictive_entropy(probs, multilabel=False):
    """Entropy of the mean predicted distribution (total uncertainty).

    `H[mean_s p_s] = -sum_c pbar_c log pbar_c` over the last axis, where `pbar`
    is the mean over samples of the per-sample probabilities. For binary and
    multi-label outputs, the Bernoulli entropy
    `-pbar log pbar - (1 - pbar) log(1 - pbar)` of each label.

    Args:
        probs: Probabilities shaped `(batch, samples, ..., classes)`.
        multilabel: Whether the last axis holds independent binary labels.

    Returns:
        Tensor shaped `(batch, ...)` in nats; `(batch, ..., labels)` for
        binary or multi-label outputs.

    Example:

    ```python
    probs = np.array([[[1.0, 0.0], [0.0, 1.0]]])  # two confident samples
    kd.uncertainty.predictive_entropy(probs)  # [log(2)]: they disagree
    ```
    """
    probs = _to_probabilities(probs)
    return _entropy(ops.mean(probs, axis=1), _is_bernoulli(probs, multilabel))


def expected_entropy(probs, multilabel=False):
    """Mean over samples of the entropy of each sample (aleatoric part).

    Args:
        probs: Probabilities shaped `(batch, samples, ..., classes)`.
        multilabel: Whether the last axis holds independent binary labels.

    Returns:
        Tensor shaped `(batch, ...)` in nats; `(batch, ..., labels)` for
        binary or multi-label outputs.

    Example:

    ```python
    probs = np.array([[[1.0, 0.0], [0.0, 1.0]]])
    kd.uncertainty.expected_entropy(probs)  # [0.0]: each sample is certain
    ```
    """
    probs = _to_probabilities(probs)
    bernoulli = _is_bernoulli(probs, multilabel)
    return ops.mean(_entropy(probs, bernoulli), axis=1)


def mutual_information(probs, multilabel=False):
    """Mutual information between prediction and weights (epistemic part).

    The BALD score: `predictive_entropy - expected_entropy`. It is
    non-negative in exact arithmetic (entropy is concave); rounding can push
    it a few ulps below zero when the samples agree, so it is clipped at 0.

    Args:
        probs: Probabilities shaped `(batch, samples, ..., classes)`.
        multilabel: Whether the last axis holds independent binary labels.

    Returns:
        Tensor shaped `(batch, ...)` in nats; `(batch, ..., labels)` for
        binary or multi-label outputs.

    Example:

    ```python
    probs = np.array([[[1.0, 0.0], [0.0, 1.0]]])
    kd.uncertainty.mutual_information(probs)  # [log(2) - 0.0]
    ```
    """
    probs = _to_probabilities(probs)
    bernoulli = _is_bernoulli(probs, multilabel)
    total = _entropy(ops.mean(probs, axis=1), bernoulli)
    aleatoric = ops.mean(_entropy(probs, bernoulli), axis=1)
    return ops.maximum(total - aleatoric, ops.zeros_like(total))


def variation_ratio(probs, multilabel=False):
    """Fraction of samples that disagree with the modal prediction.

    `1 - (count of the most frequent predicted class) / samples`, where each
    sample predicts the argmax of its probabilities (the first class on ties).
    For binary and multi-label outputs each label is predicted positive when
    its probability is above 0.5, and the ratio is computed per label.

    Args:
        probs: Probabilities shaped `(batch, samples, ..., classes)`. The
            class axis must have a static size.
        multilabel: Whether the last axis holds independent binary labels.

    Returns:
        Tensor shaped `(batch, ...)` with values in `[0, 1 - 1/classes]`;
        `(batch, ..., labels)` for binary or multi-label outputs.

    Example:

    ```python
    probs = np.array([[[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]]])
    kd.uncertainty.variation_ratio(probs)  # [1 - 3 / 4]
    ```
    """
    probs = _to_probabilities(probs)
    num_samples = ops.cast(ops.shape(probs)[1], probs.dtype)
    if _is_bernoulli(probs, multilabel):
        positives = ops.sum(
            ops.cast(ops.greater(probs, 0.5), probs.dtype), axis=1
        )
        modal = ops.maximum(positives, num_samples - positives)
    else:
        num_classes = probs.shape[-1]
        if num_classes is None:
            raise ValueError(
                "Invalid value received for argument `probs`. Expected the "
                "class axis (the last one) to have a static size. Received: "
                f"probs.shape={tuple(probs.shape)}"
            )
        votes = ops.one_hot(
            ops.argmax(probs, axis=-1), num_classes, dtype=probs.dtype
        )
        modal = ops.max(ops.sum(votes, axis=1), axis=-1)
    return 1.0 - modal / num_samples


def quantile_interval(samples, level=0.95):
    """Central interval of the MC samples: empirical quantiles over axis 1.

    Returns the `(1 - level) / 2` and `(1 + level) / 2` quantiles, with the
    linear interpolation between order statistics that `numpy.quantile` uses
    by default (`method="linear"`).

    Args:
        samples: Tensor shaped `(batch, samples, ...)`.
        level: Float strictly between 0 and 1, the probability mass between
            the bounds. Defaults to 0.95.

    Returns:
        Tuple `(lower, upper)` of tensors shaped `(batch, ...)`.

    Example:

    ```python
    samples = np.arange(11.0).reshape(1, 11, 1)  # 0, 1, ..., 10
    lower, upper = kd.uncertainty.quantile_interval(samples, level=0.8)
    # lower == [[1.0]], upper == [[9.0]]
    ```
    """
    _check_level(level)
    samples = _to_float_tensor(samples, "samples", min_rank=2)
    ordered = ops.sort(samples, axis=1)
    lower = _sorted_quantile(ordered, (1.0 - float(level)) / 2.0)
    upper = _sorted_quantile(ordered, (1.0 + float(level)) / 2.0)
    return lower, upper


def aleatoric_variance(sample_variances):
    """Mean over samples of the predicted (noise) variances: the aleatoric part.

    For a heteroscedastic model (`kd.layers.GaussianHead`, or a variance
    output) each MC sample predicts a Gaussian; the data's own noise is the
    average of their variances (Kendall & Gal 2017, eq. 9).

    Args:
        sample_variances: Tensor shaped `(batch, samples, ...)`, each
            sample's predicted variance.

    Returns:
        Tensor shaped `(batch, ...)`.

    Example:

    ```python
    variances = np.array([[[1.0], [3.0]]])
    kd.uncertainty.aleatoric_variance(variances)  # [[2.0]]
    ```
    """
    return predictive_mean(sample_variances)


def epistemic_variance(samples):
    """Variance over samples of the predicted means: the epistemic part.

    The spread of the model's predictions over dropout samples (the model's
    uncertainty about itself), without any noise term: `predictive_variance`
    with `tau=None`.

    Args:
        samples: Tensor shaped `(batch, samples, ...)` of predicted means.

    Returns:
        Tensor shaped `(batch, ...)`.

    Example:

    ```python
    samples = np.array([[[1.0], [3.0]]])
    kd.uncertainty.epistemic_variance(samples)  # [[1.0]]
    ```
    """
    return predictive_variance(samples)


# Bisection steps of `gaussian_mixture_interval`: the bracket (at most a few
# thousand standard deviations wide) shrinks 2**-60 times, past float64's
# resolution of any quantile in it.
_BISECTION_STEPS = 60
_BRACKET_STDDEVS = 10.0


def gaussian_mixture_interval(samples, sample_variances, level=0.95, tau=None):
    """Central interval of the equal-weight mixture of the samples' Gaussians.

    The predictive distribution of a heteroscedastic model under MC dropout
    is `(1/S) sum_s N(mean_s, variance_s (+ 1/tau))`; its `(1 - level) / 2`
    and `(1 + level) / 2` quantiles are found by bisection on the mixture's
    CDF (a fixed number of steps, so it runs inside graphs and signatures).

    Args:
        samples: Tensor shaped `(batch, samples, ...)`: each sample's mean.
        sample_variances: Tensor of the same shape: each sample's variance.
        level: Float strictly between 0 and 1.
        tau: Optional observation precision: adds `1 / tau` to every
            component's variance.

    Returns:
        Tuple `(lower, upper)` of tensors shaped `(batch, ...)`.

    Example:

    ```python
    means, variances = np.zeros((1, 1, 1)), np.ones((1, 1, 1))
    kd.uncertainty.gaussian_mixture_interval(means, variances)  # (-1.96, 1.96)
    ```
    """
    _check_level(level)
    _check_variance_values(sample_variances)
    samples = _to_float_tensor(samples, "samples", min_rank=2)
    variances = _matching_variances(sample_variances, samples)
    return _mixture_interval(samples, _plus_noise(variances, tau), level)


def _mixture_interval(samples, variances, level):
    """`gaussian_mixture_interval` of validated tensors (the noise already in `variances`)."""
    stddev = ops.sqrt(ops.maximum(variances, 0.0))
    scale = stddev * math.sqrt(2.0)  # the erf argument's denominator
    spread = _BRACKET_STDDEVS * stddev
    low = ops.min(samples - spread, axis=1)
    high = ops.max(samples + spread, axis=1)
    # Both quantiles at once: axis 0 holds the lower, then the upper one.
    targets = ops.reshape(
        ops.convert_to_tensor([(1.0 - float(level)) / 2.0, (1.0 + float(level)) / 2.0], samples.dtype),
        (2,) + (1,) * len(low.shape),
    )
    bounds = (ops.stack([low, low]), ops.stack([high, high]))
    tiny = ops.cast(1e-30, samples.dtype)

    def step(_, bounds):
        below, above = bounds
        middle = 0.5 * (below + above)
        z = (ops.expand_dims(middle, 2) - samples[None]) / ops.maximum(scale[None], tiny)
        cdf = ops.mean(0.5 * (1.0 + ops.erf(z)), axis=2)
        short = ops.less(cdf, targets)
        return ops.where(short, middle, below), ops.where(short, above, middle)

    below, above = ops.fori_loop(0, _BISECTION_STEPS, step, bounds)
    middle = 0.5 * (below + above)
    return middle[0], middle[1]


CLASSIFICATION_MEASURES = (
    "predictive_entropy",
    "expected_entropy",
    "mutual_information",
    "variation_ratio",
)


def summarize(samples, task, from_logits=False, tau=None, interval_levels=(), sample_variances=None):
    """Every statistic of one output's MC samples, as `predict_mc` reports them.

    The one place the statistics are assembled: `kd.predict_mc` (block by
    block) and the `mc` / `mc_sample` serving signatures both call it, so the
    same samples give the same numbers locally and served.

    Args:
        samples: `(batch, samples, ...)` tensor of model outputs.
        task: "regression", "classification" or "multilabel".
        from_logits: the samples are logits (classification only); they are
            turned into probabilities per sample before any statistic.
        tau: observation precision; adds `1 / tau` to the variance
            (regression only).
        interval_levels: levels of the central intervals to include.
        sample_variances: regression only: each sample's predicted
            variance, shaped like `samples` (a heteroscedastic model, whose
            samples are then the predicted means).

    Returns:
        A dict of batch-major tensors: `mean`, `variance`, `stddev`,
        `epistemic_variance` (regression), `("lower", level)` /
        `("upper", level)` per interval level and, for classifiers, the
        `CLASSIFICATION_MEASURES`. With `sample_variances`: also
        `aleatoric_variance`; `variance` is the sum of the two parts (plus
        `1 / tau` when given) and the intervals are the Gaussian mixture's.

    Example:

    ```python
    stats = kd.uncertainty.summarize(np.random.rand(4, 10, 1), "regression")
    stats["mean"].shape   # (4, 1)
    ```
    """
    if task not in ("regression", "classification", "multilabel"):
        raise ValueError(
            "Invalid value received for argument `task`. Expected "
            f"'regression', 'classification' or 'multilabel'. Received: task={task!r}"
        )
    samples = _to_float_tensor(samples, "samples", min_rank=2)
    multilabel = task == "multilabel"
    if sample_variances is not None:
        if task != "regression":
            raise ValueError(
                "Invalid value received for argument `sample_variances`: predicted "
                f"variances belong to regression outputs. Received task={task!r}"
            )
        return _summarize_gaussians(samples, sample_variances, tau, interval_levels)
    if task != "regression" and from_logits:
        samples = probabilities_from_logits(samples, multilabel=multilabel)
    stats = {"mean": predictive_mean(samples)}
    if task == "regression":
        stats["epistemic_variance"] = epistemic_variance(samples)
        variance = _plus_noise(stats["epistemic_variance"], tau)
    else:
        variance = predictive_variance(samples)
    stats["variance"], stats["stddev"] = variance, ops.sqrt(variance)
    for level in interval_levels:
        stats[("lower", float(level))], stats[("upper", float(level))] = quantile_interval(
            samples, level
        )
    if task != "regression":
        for name in CLASSIFICATION_MEASURES:
            stats[name] = globals()[name](samples, multilabel=multilabel)
    return stats


def _check_variance_values(sample_variances):
    if isinstance(sample_variances, (np.ndarray, list, tuple)):
        # Concrete inputs are checked (a traced tensor cannot raise on its values).
        values = np.asarray(sample_variances, dtype="float64")
        if not np.all(np.isfinite(values) & (values >= 0)):
            bad = values[~(np.isfinite(values) & (values >= 0))].ravel()[0]
            raise ValueError(
                "Invalid value received for argument `sample_variances`. Expected finite "
                f"variances >= 0. Received a value of {bad}"
            )


def _matching_variances(sample_variances, samples):
    variances = ops.cast(_to_float_tensor(sample_variances, "sample_variances", min_rank=2), samples.dtype)
    if tuple(variances.shape) != tuple(samples.shape):
        raise ValueError(
            "Invalid value received for argument `sample_variances`. Expected the "
            f"shape of `samples`, {tuple(samples.shape)}. Received: "
            f"sample_variances.shape={tuple(variances.shape)}"
        )
    return variances


def _summarize_gaussians(samples, sample_variances, tau, interval_levels):
    _check_variance_values(sample_variances)
    variances = _matching_variances(sample_variances, samples)
    aleatoric = aleatoric_variance(variances)
    epistemic = epistemic_variance(samples)
    variance = _plus_noise(aleatoric + epistemic, tau)
    stats = {
        "mean": predictive_mean(samples),
        "variance": variance,
        "stddev": ops.sqrt(variance),
        "aleatoric_variance": aleatoric,
        "epistemic_variance": epistemic,
    }
    component_variances = _plus_noise(variances, tau) if interval_levels else None
    for level in interval_levels:
        _check_level(level)
        stats[("lower", float(level))], stats[("upper", float(level))] = _mixture_interval(
            samples, component_variances, level
        )
    return stats


def _check_level(level):
    if (
        isinstance(level, bool)
        or not isinstance(level, (int, float, np.number))
        or not 0 < level < 1
    ):
        raise ValueError(
            "Invalid value received for argument `level`. Expected a float "
            f"strictly between 0 and 1. Received: level={level!r}"
        )


def _sorted_quantile(ordered, q):
    num_samples = ordered.shape[1]
    if num_samples is not None:
        # Static sample count: compute the position in Python float64, as
        # NumPy does, so that the interpolation weights match it exactly.
        position = q * (num_samples - 1)
        below = min(int(math.floor(position)), num_samples - 1)
        above = min(below + 1, num_samples - 1)
        fraction = position - below
    else:
        # The sample count is only known at run time (e.g. a signature with a
        # variable `num_samples`): same formula on tensors.
        last = ops.cast(ops.shape(ordered)[1] - 1, ordered.dtype)
        position = q * last
        below_float = ops.minimum(ops.floor(position), last)
        fraction = position - below_float
        below = ops.cast(below_float, "int32")
        above = ops.cast(ops.minimum(below_float + 1.0, last), "int32")
    low = ops.take(ordered, below, axis=1)
    high = ops.take(ordered, above, axis=1)
    return low + ops.cast(fraction, ordered.dtype) * (high - low)


def _entropy(probs, bernoulli):
    # Means of float32 probabilities can overshoot 1 (or 0) by an ulp; clip so
    # that `1 - p` never goes negative and the entropy never goes below 0.
    probs = ops.clip(probs, 0.0, 1.0)
    if bernoulli:
        return -(_xlogx(probs) + _xlogx(1.0 - probs))
    return -ops.sum(_xlogx(probs), axis=-1)


def _xlogx(x):
    # x * log(x) with its limit 0 at x = 0. The inner `where` keeps `log(0)`
    # (and its infinite gradient, which would become NaN) out of the graph.
    positive = ops.greater(x, 0.0)
    safe = ops.where(positive, x, ops.ones_like(x))
    return ops.where(positive, x * ops.log(safe), ops.zeros_like(x))


def _is_bernoulli(probs, multilabel):
    return _check_multilabel(multilabel) or probs.shape[-1] == 1


def _check_multilabel(multilabel):
    if not isinstance(multilabel, (bool, np.bool_)):
        raise ValueError(
            "Invalid value received for argument `multilabel`. Expected a "
            f"boolean. Received: multilabel={multilabel!r}"
        )
    return bool(multilabel)


def _to_probabilities(probs):
    if isinstance(probs, (np.ndarray, list, tuple)):
        # Concrete inputs are cheap to check and catch the common mistake of
        # passing logits; tensors are not checked, since a value check cannot
        # raise inside a traced graph.
        values = np.asarray(probs, dtype="float64")
        if not np.all((values >= 0.0) & (values <= 1.0)):
            bad = values[~((values >= 0.0) & (values <= 1.0))].ravel()[0]
            raise ValueError(
                "Invalid value received for argument `probs`. Expected "
                "probabilities in [0, 1] (apply `probabilities_from_logits` "
                f"to logits first). Received a value of {bad}"
            )
    return _to_float_tensor(probs, "probs", min_rank=3)


def _to_float_tensor(x, name, min_rank):
    x = ops.convert_to_tensor(x)
    if keras.backend.standardize_dtype(x.dtype) != "float64":
        x = ops.cast(x, "float32")
    if len(x.shape) < min_rank:
        expected = "(batch, samples, ...)"
        if min_rank == 3:
            expected = "(batch, samples, ..., classes)"
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected a tensor "
            f"shaped {expected}, of rank at least {min_rank}. Received: "
            f"{name}.shape={tuple(x.shape)}"
        )
    if x.shape[1] == 0:
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected at "
            "least one sample on axis 1. Received: "
            f"{name}.shape={tuple(x.shape)}"
        )
    return x


def _check_positive_number(value, name):
    if isinstance(value, bool):
        valid = False
    elif isinstance(value, (int, float, np.number)):
        valid = math.isfinite(value) and value > 0
    else:
        # A tensor (e.g. a signature input) cannot be checked while tracing.
        valid = True
    if not valid:
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected a "
            f"positive finite float. Received: {name}={value!r}"
        )
