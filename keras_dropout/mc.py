"""`predict_mc`: Monte Carlo predictions with uncertainty from any Keras model."""

import math
import numbers
import threading
import time
import warnings
import weakref

import keras
import numpy as np
from keras import ops
from keras import tree

from keras_dropout import _keras_internals as internals
from keras_dropout import masks
from keras_dropout import uncertainty
from keras_dropout.heads import output_names  # noqa: F401  (part of mc's interface)
from keras_dropout.heads import prediction_heads
from keras_dropout.sites import stochastic_sites
from keras_dropout.vectorize import sample_outputs

DEFAULT_CHUNK_SIZE = 8192
MAX_NUM_SAMPLES = 1_000_000

SEED_RANGE = (-(2**63), 2**63)  # what the mc_sample signature's int64 seed holds

_compiled_functions = weakref.WeakKeyDictionary()
_xla_refused = weakref.WeakKeyDictionary()  # model -> why XLA cannot compile it
_path_trials = weakref.WeakKeyDictionary()  # model -> {input signature: _PathTrial}
_warned_models = weakref.WeakSet()


class MCPrediction:
    """The Monte Carlo predictive distribution of one model output.

    All arrays are NumPy, batch first.

    Attributes:
        mean: predictive mean over samples (probabilities for classifiers,
            averaged per sample, never logits).
        variance: variance over samples (ddof=0), plus `1 / tau` when `tau`
            was given. For a Gaussian output (`kd.layers.GaussianHead`, or
            `variance_output=`): `aleatoric_variance + epistemic_variance`
            (+ `1 / tau` when given).
        stddev: `sqrt(variance)`.
        aleatoric_variance: Gaussian outputs only: the mean over samples of
            the predicted variances (the data's noise).
        epistemic_variance: regression only: the variance over samples of the
            predicted means (the model's uncertainty), without `1 / tau`.
        samples: `(batch, samples, ...)` when `return_samples=True`, else None
            (the predicted means of a Gaussian output).
        sample_variances: with `return_samples=True`, a Gaussian output's
            predicted variances, shaped like `samples`; else None.
        task: "regression", "classification" or "multilabel" (binary
            classification with one sigmoid unit counts as multilabel).
        predictive_entropy, expected_entropy, mutual_information,
        variation_ratio: classification only (entropies in nats); reading
            them on a regression prediction raises `ValueError`.
    """

    def __init__(
        self, task, mean, variance, samples=None, intervals=None, measures=None, sample_variances=None, tau=None
    ):
        self.task = task
        self.mean = mean
        self.variance = variance
        self.samples = samples
        self.sample_variances = sample_variances
        self._tau = tau
        self._intervals = dict(intervals or {})
        self._measures = dict(measures or {})

    @property
    def stddev(self):
        return np.sqrt(self.variance)

    @property
    def aleatoric_variance(self):
        if "aleatoric_variance" not in self._measures:
            if self.task != "regression":
                raise ValueError(
                    "`aleatoric_variance` belongs to Gaussian regression outputs; for a classifier "
                    "the aleatoric part is `expected_entropy`."
                )
            raise ValueError(
                "This output predicts no variance of its own, so it has no aleatoric variance (with "
                "tau= the noise variance is the constant 1 / tau). End the model in "
                "kd.layers.GaussianHead, or pass variance_output= naming the output that holds the "
                "(log-)variance."
            )
        return self._measures["aleatoric_variance"]

    @property
    def epistemic_variance(self):
        if "epistemic_variance" not in self._measures:
            raise ValueError(
                "`epistemic_variance` belongs to regression outputs; for a classifier the epistemic "
                "part is `mutual_information`."
            )
        return self._measures["epistemic_variance"]

    def interval(self, level=0.95):
        """Central interval `(lower, upper)` of the predictive distribution.

        Empirical quantiles of the samples; for a Gaussian output, the
        quantiles of the mixture of the samples' Gaussians. Available for
        the levels passed as `interval_levels=` to `predict_mc`, or for any
        level when `return_samples=True`.
        """
        if float(level) in self._intervals:
            return self._intervals[float(level)]
        if self.samples is not None:
            if self.sample_variances is not None:
                lower, upper = uncertainty.gaussian_mixture_interval(
                    self.samples, self.sample_variances, level, tau=self._tau
                )
            else:
                lower, upper = uncertainty.quantile_interval(self.samples, level)
            return ops.convert_to_numpy(lower), ops.convert_to_numpy(upper)
        raise ValueError(
            f"No interval at level={level!r}: predict_mc computed the levels "
            f"{sorted(self._intervals)}. Pass interval_levels=({level!r},) or "
            "return_samples=True to predict_mc."
        )

    def _measure(self, name):
        if self.task == "regression":
            raise ValueError(
                f"`{name}` is a classification measure, but this is a "
                "regression prediction (the output has no softmax/sigmoid "
                "activation). Pass task='classification' (with "
                "from_logits=True for logits) if the outputs are class scores."
            )
        return self._measures[name]

    predictive_entropy = property(lambda self: self._measure("predictive_entropy"))
    expected_entropy = property(lambda self: self._measure("expected_entropy"))
    mutual_information = property(lambda self: self._measure("mutual_information"))
    variation_ratio = property(lambda self: self._measure("variation_ratio"))

    def __repr__(self):
        gaussian = ", gaussian=True" if "aleatoric_variance" in self._measures else ""
        return (
            f"MCPrediction(task={self.task!r}{gaussian}, mean.shape={self.mean.shape}, "
            f"samples={'None' if self.samples is None else self.samples.shape})"
        )


def predict_mc(
    model,
    x,
    num_samples=50,
    *,
    batch_size=None,
    seed=None,
    task="auto",
    from_logits=False,
    return_samples=False,
    interval_levels=(0.95,),
    tau=None,
    jit_compile="auto",
    verbose="auto",
    chunk_size=DEFAULT_CHUNK_SIZE,
    row_ids=None,
    variance_output=None,
    variance_kind=None,
):
    """Monte Carlo dropout predictions: mean, variance, entropies, intervals.

    Runs `num_samples` stochastic forward passes per row with every
    stochastic site of the model sampling (keras-dropout layers, Keras'
    dropout layers wherever they sit, attention and RNN dropout: see
    `kd.stochastic_sites`) and every other layer (BatchNormalization
    included) in inference mode, writing no variable. The model itself is
    used as it is: nothing is converted, copied or altered.

    The S samples of a chunk of rows run in one compiled call on an S-fold
    tiled batch; layers upstream of the first stochastic layer run once per
    row, not S times (Sequential and functional models, nested ones too).

    Memory: at most `chunk_size` (row, sample) pairs go through the model in
    one call, so peak activation memory is about `chunk_size` times the
    per-row activation size, whatever `num_samples` and the data size.
    Host memory holds the statistics of all rows, plus the samples of one
    chunk of rows or 16 MiB of them, whichever is more (all rows with
    `return_samples=True`).

    Args:
        model: any Keras model (Sequential, functional, subclassed, keras_hub,
            keras.applications) with at least one site that samples.
        x: inputs: an array, a list or dict of arrays (multi-input models), or
            a `tf.data.Dataset` yielding inputs or `(inputs, targets)`.
        num_samples: int >= 1, Monte Carlo samples S per row.
        batch_size: optional upper bound on rows per compiled call.
        seed: optional Python or NumPy int in [-2**63, 2**63); the same seed
            gives identical results, whatever `batch_size` and `chunk_size`
            (to float rounding while `jit_compile="auto"` is still timing
            its two paths).
        task: "auto" (softmax/sigmoid output => classification; one sigmoid
            unit = binary, several = multi-label), "regression" or
            "classification".
        from_logits: the outputs are logits; each sample is turned into
            probabilities (softmax, or sigmoid for one unit) before averaging.
        return_samples: keep the `(B, S, ...)` samples.
        interval_levels: levels of the central intervals to compute.
        tau: observation precision; adds `1 / tau` to `variance` (regression).
        jit_compile: True, False or "auto": `jax.jit` on JAX; on
            TensorFlow, the TF graph or XLA, whichever measured faster on
            this model's calls (XLA is tried once enough graph work has been
            done to repay compiling; never for models XLA cannot compile:
            string inputs, lookup tables); a model XLA fails on runs as a
            graph from then on. `verbose=1` prints the choice. The two paths
            draw the same masks and agree to float rounding (~1e-6); pass
            True or False for bitwise-identical repeats.
        verbose: 0, 1 or "auto" (a progress bar when there are 10+ calls).
        chunk_size: the memory knob above (default 8192).
        row_ids: optional integer id per row (e.g. an example key), shape
            `(rows,)`, values in [-2**63, 2**63). Masks depend only on (seed,
            row id, sample), so a row gets the same samples in any batch,
            chunk, process or machine. Default: the row's position in `x`
            (counted across the batches of a Dataset).
        variance_output: for a stock model with a mean output and a
            variance output: the name of the output holding the variance
            (or log-variance) of the other one, or a dict `{mean output:
            variance output}` for several pairs. Each pair is reported as
            one Gaussian prediction under the mean output's name. Outputs
            of a `kd.layers.GaussianHead` are recognised without it.
        variance_kind: "log" (the default with `variance_output`) or
            "variance": what the variance output holds.

    Returns:
        An `MCPrediction`, or a dict of them keyed by output name when the
        model reports several (a mean/variance pair counts as one).
        Gaussian outputs (a `GaussianHead`, or `variance_output=`) add
        `aleatoric_variance` and `epistemic_variance`, and their intervals
        are the Gaussian mixture's.

    Example:

    >>> import numpy as np, keras, keras_dropout as kd
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(8),
    ...                           keras.layers.Dropout(0.5), keras.layers.Dense(1)])
    >>> result = kd.predict_mc(model, np.ones((4, 3), "float32"), num_samples=20, seed=0)
    >>> result.mean.shape, bool((result.variance > 0).all())
    ((4, 1), True)
    """
    num_samples = _validate_num_samples(num_samples)
    chunk_size = _validate_positive_int(chunk_size, "chunk_size")
    if batch_size is not None:
        batch_size = _validate_positive_int(batch_size, "batch_size")
    _validate_task(task)
    _validate_tau(tau)
    levels = tuple(float(level) for level in interval_levels)
    seed_words = _seed_words(np.random.randint(2**31) if seed is None else seed)
    batches = input_batches(model, x)
    row_words = _row_words(row_ids, sum(_num_rows(b) for b in batches))
    _samplable_model(model, batches[0])
    first_row = tree.map_structure(lambda a: a[:1], batches[0])
    heads = prediction_heads(model, task, from_logits, variance_output, variance_kind, sample_inputs=first_row)
    num_outputs = len(output_names(model))
    path = _execution_path(jit_compile, model)

    samples_per_call = min(num_samples, chunk_size)
    rows_per_call = full_call_rows(num_samples, chunk_size)
    if batch_size is not None:
        rows_per_call = min(rows_per_call, batch_size)
    rows_per_call, padded_rows = call_layout(max(_num_rows(b) for b in batches), rows_per_call)
    calls_per_chunk = math.ceil(num_samples / samples_per_call)
    total_calls = sum(math.ceil(_num_rows(b) / rows_per_call) for b in batches) * calls_per_chunk
    progress = _progress_bar(verbose, total_calls)

    accumulators = [_Accumulator(head.task, tau, levels, return_samples, from_logits) for head in heads]
    trial = None
    if path == "measure":
        trial = _path_trial(model, batches[0], samples_per_call)
    if progress is not None or verbose == 1:
        print(f"predict_mc: '{model.name}' runs as {_describe_path(model, path, trial)}")
    calls_left = total_calls
    row_offset = 0
    for batch in batches:
        for start in range(0, _num_rows(batch), rows_per_call):
            rows = tree.map_structure(lambda a: a[start : start + rows_per_call], batch)
            count = _num_rows(rows)
            padded = tree.map_structure(lambda a: _pad_rows(a, padded_rows), rows)
            ids = _pad_rows(row_words[row_offset + start : row_offset + start + count], padded_rows)
            per_output = [[] for _ in range(num_outputs)]
            for sample_start in range(0, num_samples, samples_per_call):
                # Derived inside the compiled call: eager seed ops cost more
                # than a small model's whole forward pass.
                words = np.append(seed_words, np.uint32(sample_start))
                calls_left -= 1
                if trial is not None:
                    outputs = trial.run(padded, words, ids, samples_per_call, calls_left)
                else:
                    outputs = _run_sampler(model, path == "xla", padded, words, ids, samples_per_call)
                for collected, output in zip(per_output, outputs):
                    collected.append(output[:count])
                if progress is not None:
                    progress.add(1)
            flat = [np.concatenate(collected, axis=1)[:, :num_samples] for collected in per_output]
            for accumulator, head in zip(accumulators, heads):
                accumulator.add(*head.split(flat))
        row_offset += _num_rows(batch)

    predictions = [accumulator.result() for accumulator in accumulators]
    if len(predictions) == 1:
        return predictions[0]
    return {head.name: prediction for head, prediction in zip(heads, predictions)}


# Samples gathered before their statistics are computed. The statistics are a
# few dozen eager backend ops per block, costing about the same whatever the
# block's size, so computing them per call dominated small calls: 10,000
# rows x S=1000 in 8-row calls took 8.7 s against 2.2 s gathered
# (benchmarks/bench_mc.py's small model, TF, 2 CPU cores). 2**22 float32 = 16 MiB.
_PENDING_VALUES = 2**22


class _Accumulator:
    """Per-output statistics, computed block by block with `kd.uncertainty`."""

    def __init__(self, task, tau, levels, keep_samples, from_logits):
        self.task = task
        self.tau = tau if task == "regression" else None
        self.levels = levels
        self.keep_samples = keep_samples
        self.from_logits = from_logits
        self.parts = {}
        self.pending = []
        self.pending_values = 0

    def add(self, samples, sample_variances=None):
        """Takes the `(rows, S, ...)` samples of the next rows (and a Gaussian output's variances)."""
        self.pending.append((samples, sample_variances))
        self.pending_values += samples.size
        if self.pending_values >= _PENDING_VALUES:
            self._flush()

    def _flush(self):
        if self.pending:
            join = lambda arrays: arrays[0] if len(arrays) == 1 else np.concatenate(arrays)  # noqa: E731
            samples = join([s for s, _ in self.pending])
            variances = None if self.pending[0][1] is None else join([v for _, v in self.pending])
            self.pending, self.pending_values = [], 0
            self._add_block(samples, variances)

    def _append(self, name, value):
        self.parts.setdefault(name, []).append(np.asarray(ops.convert_to_numpy(value)))

    def _add_block(self, samples, sample_variances=None):
        samples = samples.astype(np.float32 if samples.dtype.itemsize <= 4 else samples.dtype)
        if sample_variances is not None:
            sample_variances = sample_variances.astype(samples.dtype)
        stats = uncertainty.summarize(
            samples,
            self.task,
            self.from_logits,
            tau=self.tau,
            interval_levels=self.levels,
            sample_variances=sample_variances,
        )
        for name, value in stats.items():
            self._append(name, value)
        if self.keep_samples:
            if sample_variances is not None:
                self._append("sample_variances", sample_variances)
            if self.task != "regression" and self.from_logits:
                samples = uncertainty.probabilities_from_logits(
                    samples, multilabel=self.task == "multilabel"
                )
            self._append("samples", samples)

    def result(self):
        self._flush()
        joined = {name: np.concatenate(parts, axis=0) for name, parts in self.parts.items()}
        intervals = {
            level: (joined[("lower", level)], joined[("upper", level)]) for level in self.levels
        }
        measures = {
            name: joined[name]
            for name in uncertainty.CLASSIFICATION_MEASURES + ("aleatoric_variance", "epistemic_variance")
            if name in joined
        }
        return MCPrediction(
            self.task,
            joined["mean"],
            joined["variance"],
            samples=joined.get("samples"),
            intervals=intervals,
            measures=measures,
            sample_variances=joined.get("sample_variances"),
            tau=self.tau,
        )


def _validate_task(task):
    if task not in ("auto", "regression", "classification"):
        raise ValueError(
            "Invalid value received for argument `task`. Expected 'auto', "
            f"'regression' or 'classification'. Received: task={task!r}"
        )


def _validate_tau(tau):
    if tau is not None and not (
        isinstance(tau, numbers.Real) and math.isfinite(tau) and tau > 0
    ):
        raise ValueError(
            "Invalid value received for argument `tau`. Expected a finite "
            f"float > 0. Received: tau={tau!r}"
        )


def _validate_num_samples(num_samples):
    if (
        isinstance(num_samples, bool)
        or not isinstance(num_samples, numbers.Integral)
        or not 1 <= num_samples <= MAX_NUM_SAMPLES
    ):
        raise ValueError(
            "Invalid value received for argument `num_samples`. Expected an "
            f"integer between 1 and {MAX_NUM_SAMPLES}. "
            f"Received: num_samples={num_samples!r}"
        )
    return int(num_samples)


def _validate_positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected a "
            f"positive integer. Received: {name}={value!r}"
        )
    return int(value)


def _validate_seed(seed, name="seed"):
    low, high = SEED_RANGE
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not low <= seed < high:
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected a Python or "
            f"NumPy integer in [-2**63, 2**63). Received: {name}={seed!r}"
        )
    return int(seed)


def full_call_rows(num_samples, chunk_size):
    """The rows of one full model call of `predict_mc`: its `chunk_size` memory bound."""
    return max(1, chunk_size // min(num_samples, chunk_size))


def call_layout(largest_batch, capacity):
    """`(rows per call, padded rows per call)` for batches of up to `largest_batch` rows.

    Padding rows are run and thrown away, so the rows split into equal calls
    instead of full ones plus a padded remainder (256 rows at 163 a call ran
    326). Compiled calls see bucketed shapes: rows pad up to a power of two (at
    most `capacity`, the memory bound), so a new batch size reuses a compiled
    function instead of retracing (XLA and JAX compile per shape). Masks depend
    on the row id only, not on the padded size, so neither changes a result.
    """
    rows_per_call = math.ceil(largest_batch / math.ceil(largest_batch / capacity))
    return rows_per_call, min(capacity, 1 << (rows_per_call - 1).bit_length())


def _seed_words(seed):
    """`(low, high)` uint32 words of a seed's 64-bit two's complement."""
    value = _validate_seed(seed) & 0xFFFFFFFFFFFFFFFF
    return np.array([value & 0xFFFFFFFF, value >> 32], np.uint32)


def _row_words(row_ids, num_rows):
    """`(rows, 2)` uint32 (low, high) words of each row's id."""
    if row_ids is None:
        ids = np.arange(num_rows, dtype=np.int64)
    else:
        ids = np.asarray(row_ids)
        if ids.shape != (num_rows,) or ids.dtype.kind not in "iu":
            raise ValueError(
                "Invalid value received for argument `row_ids`. Expected one "
                f"integer per row, shape ({num_rows},). Received: dtype "
                f"{ids.dtype}, shape {ids.shape}"
            )
        if ids.dtype.kind == "u" and ids.size and ids.max() >= 2**63:
            raise ValueError(
                "Invalid value received for argument `row_ids`. Expected "
                "values in [-2**63, 2**63)."
            )
        ids = ids.astype(np.int64)
    unsigned = ids.view(np.uint64) if ids.dtype == np.int64 else ids.astype(np.uint64)
    words = np.stack([unsigned & 0xFFFFFFFF, unsigned >> np.uint64(32)], axis=1)
    return words.astype(np.uint32)


def _samplable_model(model, first_batch=None):
    """Checks that `model` has something to sample; returns its sites."""
    if not isinstance(model, keras.Model):
        raise ValueError(
            "Invalid value received for argument `model`. Expected a "
            f"keras.Model. Received: model={model!r}"
        )
    if not model.built and first_batch is not None:
        # A subclassed model creates its layers on the first call.
        model(tree.map_structure(lambda a: a[:1], first_batch))
    sites = stochastic_sites(model)
    if not sites.sampled:
        raise ValueError(
            f"Model '{model.name}' has nothing that samples: every Monte Carlo "
            "sample would be identical and the variance silently zero. Its "
            f"stochastic sites (kd.stochastic_sites(model)):\n{sites}"
        )
    skipped = [site for site in sites if not site.sampled and site.rate > 0]
    if skipped and model not in _warned_models:
        _warned_models.add(model)
        warnings.warn(
            f"Model '{model.name}': these dropout/noise sites cannot be sampled, so "
            "the Monte Carlo variance leaves them out: "
            + "; ".join(f"{site.path} ({site.reason})" for site in skipped),
            stacklevel=3,
        )
    return sites


_UNCOMPILABLE_LAYERS = tuple(
    getattr(keras.layers, name)
    for name in ("StringLookup", "IntegerLookup", "TextVectorization", "Hashing")
    if hasattr(keras.layers, name)
)


def _xla_obstacle(model):
    """Why XLA cannot compile `model` (string tensors, lookup tables), or None."""
    for tensor in tree.flatten(getattr(model, "inputs", None) or []):
        if keras.backend.standardize_dtype(tensor.dtype) == "string":
            return f"string input '{tensor.name}'"
    for layer in internals.flatten_layers(model):
        if isinstance(layer, _UNCOMPILABLE_LAYERS):
            return f"{type(layer).__name__} layer '{layer.name}'"
        if getattr(layer, "supports_jit", True) is False:
            # Keras' own flag, e.g. an LSTM/GRU that runs cuDNN kernels on a GPU.
            return f"{type(layer).__name__} layer '{layer.name}' does not support XLA"
    return None


def _execution_path(jit_compile, model):
    """"xla", "graph" or "measure" (TensorFlow, `jit_compile="auto"`)."""
    if jit_compile == "auto":
        if keras.backend.backend() == "jax":
            # Without jit, JAX runs op by op from Python: always slower.
            return "xla"
        if keras.backend.backend() != "tensorflow" or model in _xla_refused:
            return "graph"
        obstacle = _xla_obstacle(model)
        if obstacle is not None:
            _xla_refused[model] = obstacle
            return "graph"
        # XLA fuses the per-row mask hash into its consumer, which TF's graph
        # executor runs as a dozen full-size integer ops, but it is not always
        # faster: bench_mc.py --parts auto (2 CPU cores) measured XLA at 0.44x
        # the graph's time on an MLP and 7x on EfficientNetB0. So the two
        # are timed.
        return "measure"
    if not isinstance(jit_compile, bool):
        raise ValueError(
            "Invalid value received for argument `jit_compile`. Expected "
            f"True, False or 'auto'. Received: jit_compile={jit_compile!r}"
        )
    return "xla" if jit_compile else "graph"


# XLA is tried once the graph time spent on a model and input signature (or
# about to be, by the call in hand) reaches this many times the graph's
# tracing time: compiling for XLA took 2-3x tracing on the benchmark models,
# so trying it costs a bounded fraction of the work it might speed up.
_TRIAL_AFTER_TRACES = 3.0
_TIMED_CALLS = 3  # per path, at one padded size, before choosing


class _PathTrial:
    """`jit_compile="auto"` on TensorFlow: times the graph and XLA, keeps the faster.

    Every call of the trial is a real call whose outputs are used (both paths
    draw the same masks from the same per-row keys), so measuring costs only
    XLA's compilation. Rates (seconds per row and sample) are compared at the
    same padded row count, and a call that compiles is never timed. The
    choice is kept per model and input signature (dtypes, shapes past the
    batch, samples per call); a trial may span several `predict_mc` calls.
    """

    def __init__(self, model):
        self.model_ref = weakref.ref(model)  # the trial is cached under its model
        self.choice = None  # "xla" or "graph", once decided
        self.trace_seconds = None
        self.graph_seconds = 0.0  # spent on steady graph calls
        # padded (rows x samples) -> the latest seconds per pair, at most
        # _TIMED_CALLS of each path: the best of as many calls on both sides,
        # since a best of more calls would favour the path timed more often.
        self.graph_rates = {}
        self.xla_rates = {}
        self.xla_compiled = set()
        self.ratio = None  # XLA's time / the graph's, once decided

    def run(self, inputs, seed_words, row_words, num_samples, calls_left):
        model = self.model_ref()
        if self.choice is not None:
            return self._call(model, self.choice == "xla", inputs, seed_words, row_words, num_samples)[0]
        pairs = _num_rows(inputs) * num_samples
        if len(self.graph_rates.get(pairs, ())) < _TIMED_CALLS or not self._worth_trying(pairs, calls_left):
            outputs, seconds = self._call(model, False, inputs, seed_words, row_words, num_samples)
            if self.trace_seconds is None:
                self.trace_seconds = seconds
            else:
                self.graph_seconds += seconds
                rates = self.graph_rates.setdefault(pairs, [])
                rates[:] = (rates + [seconds / pairs])[-_TIMED_CALLS:]
            return outputs
        outputs, seconds = self._call(model, True, inputs, seed_words, row_words, num_samples)
        if model in _xla_refused:
            self.choice = "graph"
        elif pairs not in self.xla_compiled:
            self.xla_compiled.add(pairs)  # that call compiled: not a rate
        else:
            rates = self.xla_rates.setdefault(pairs, [])
            rates.append(seconds / pairs)
            if len(rates) >= _TIMED_CALLS:
                graph = self.graph_rates[pairs]
                self.ratio = min(rates) / min(graph[-len(rates):])
                self.choice = "xla" if self.ratio < 1 else "graph"
        return outputs

    def _worth_trying(self, pairs, calls_left):
        if self.xla_compiled:
            return True
        ahead = min(self.graph_rates[pairs]) * pairs * (calls_left + 1)
        return self.graph_seconds + ahead >= _TRIAL_AFTER_TRACES * self.trace_seconds

    def _call(self, model, xla, inputs, seed_words, row_words, num_samples):
        # The lock is taken before the clock starts: time spent waiting for
        # another thread's call must not count against either path.
        with TRACE_LOCK:
            start = time.perf_counter()
            outputs = _run_sampler(model, xla, inputs, seed_words, row_words, num_samples)
            return outputs, time.perf_counter() - start


def _path_trial(model, first_batch, num_samples):
    signature = tuple(
        (str(array.dtype), tuple(array.shape[1:])) for array in tree.flatten(first_batch)
    )
    trials = _path_trials.setdefault(model, {})
    return trials.setdefault((signature, num_samples), _PathTrial(model))


def _describe_path(model, path, trial):
    reason = _xla_refused.get(model)
    if reason:
        return f"graph (XLA cannot compile it: {reason})"
    if trial is None:
        return "XLA" if path == "xla" else "graph"
    if trial.choice is not None and trial.ratio is not None:
        path = "XLA" if trial.choice == "xla" else "graph"
        return f"{path} (measured: XLA {trial.ratio:.2f}x the graph's time)"
    return "graph, then XLA for a few calls to time both (jit_compile='auto')"


def sample_chunk(model, inputs, seed_words, row_words, num_samples):
    """One chunk's `(rows, S, ...)` samples: the core `predict_mc` and the
    serving signatures share.

    Args:
        seed_words: uint32 `(3,)`: the seed's low and high words, then the
            index of the chunk's first sample.
        row_words: uint32 `(rows, 2)`: the rows' ids (low, high words).

    Masks are keyed by (seed, row id, global sample index), so a seed gives
    the same result whatever `batch_size` and `chunk_size` cut the work into.
    """
    seed_words = ops.cast(seed_words, "uint32")
    sample_ids = ops.add(ops.cast(seed_words[2], "int32"), ops.arange(num_samples, dtype="int32"))
    seed = masks.make_seed(seed_words[0], seed_words[1])
    return sample_outputs(
        model, inputs, seed, num_samples, row_ids=ops.cast(row_words, "uint32"), sample_ids=sample_ids
    )


# Tracing runs Keras layers in Python, and Keras' RNN layers cache their
# dropout masks on the cell object while they are traced: two threads tracing
# the same model at once (predict_mc beside predict_mc or an export) would
# race on that cache. Calls are serialised; TensorFlow and XLA still use every
# core inside each call.
TRACE_LOCK = threading.RLock()


def _run_sampler(model, use_xla, inputs, seed_words, row_words, num_samples):
    """The flat outputs of one compiled call, as NumPy arrays (the call is done)."""
    with TRACE_LOCK:
        outputs = _run_sampler_unlocked(model, use_xla, inputs, seed_words, row_words, num_samples)
    return [ops.convert_to_numpy(output) for output in tree.flatten(outputs)]


def _run_sampler_unlocked(model, use_xla, inputs, seed_words, row_words, num_samples):
    """Calls the compiled sampler; falls back to the graph once if XLA fails."""
    sample_fn = _compiled_sampler(model, use_xla)
    if not use_xla or model in _xla_refused or keras.backend.backend() != "tensorflow":
        return sample_fn(inputs, seed_words, row_words, num_samples)
    import tensorflow as tf

    try:
        return sample_fn(inputs, seed_words, row_words, num_samples)
    except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError, tf.errors.InternalError) as error:
        # XLA cannot compile some op (the message names it). Retrying XLA on
        # such a model can abort the process inside TF, so it is never
        # retried: this model runs as a graph from now on.
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        _xla_refused[model] = first_line[:200]
        warnings.warn(
            f"predict_mc: XLA cannot compile model '{model.name}' ({first_line[:200]}); "
            "running it as a TensorFlow graph from now on (pass jit_compile=False to skip the attempt).",
            stacklevel=3,
        )
        return _compiled_sampler(model, False)(inputs, seed_words, row_words, num_samples)


def _compiled_sampler(model, xla):
    cache = _compiled_functions.setdefault(model, {})
    if xla in cache:
        return cache[xla]
    backend = keras.backend.backend()
    # The functions are cached under the model (weakly): they must not hold
    # it, or no model passed to predict_mc would ever be freed.
    model_ref = weakref.ref(model)
    if backend == "tensorflow":
        import tensorflow as tf

        functions = {}

        def sample_fn(inputs, seed_words, row_words, num_samples):
            if num_samples not in functions:
                functions[num_samples] = internals.omit_retracing_warning(
                    tf.function(
                        lambda i, s, r: sample_chunk(model_ref(), i, s, r, num_samples),
                        jit_compile=xla,
                        reduce_retracing=True,
                        autograph=False,
                    )
                )
            return functions[num_samples](inputs, seed_words, row_words)

    elif backend == "jax":
        import jax

        def stateless(values, inputs, seed_words, row_words, num_samples):
            model = model_ref()
            with keras.StatelessScope(state_mapping=list(zip(model.variables, values))):
                return sample_chunk(model, inputs, seed_words, row_words, num_samples)

        compiled = jax.jit(stateless, static_argnums=4) if xla else stateless

        def sample_fn(inputs, seed_words, row_words, num_samples):
            values = [v.value for v in model_ref().variables]
            return compiled(values, inputs, seed_words, row_words, num_samples)

    else:
        def sample_fn(inputs, seed_words, row_words, num_samples):
            return sample_chunk(model_ref(), inputs, seed_words, row_words, num_samples)

    cache[xla] = sample_fn
    return sample_fn


def _num_rows(batch):
    return int(tree.flatten(batch)[0].shape[0])


def _pad_rows(array, rows):
    missing = rows - array.shape[0]
    if missing <= 0:
        return array
    # Repeat the last row: padding with zeros could hit log(0) or a NaN check.
    return np.concatenate([array, np.repeat(array[-1:], missing, axis=0)], axis=0)


def input_batches(model, x):
    """The validated NumPy input batches of `x` (one, or a Dataset's); at least one row."""
    batches = list(_input_batches(model, x))
    if not batches or max(_num_rows(b) for b in batches) == 0:
        raise ValueError(
            "Invalid value received for argument `x`. Expected at least one "
            "row. Received: no rows."
        )
    return batches


def _input_batches(model, x):
    """Yields NumPy input structures (validated) from arrays or a Dataset."""
    if _is_dataset(x):
        for element in x.as_numpy_iterator():
            if isinstance(element, tuple) and len(element) in (2, 3):
                element = element[0]
            yield _check_inputs(model, element)
        return
    yield _check_inputs(model, x)


def _is_dataset(x):
    return type(x).__module__.startswith("tensorflow") and hasattr(x, "as_numpy_iterator")


def _check_inputs(model, x):
    inputs = model.inputs if getattr(model, "inputs", None) else None
    if isinstance(x, dict):
        arrays = {name: np.asarray(value) for name, value in x.items()}
        flat = list(arrays.values())
        names = list(arrays)
    elif isinstance(x, (list, tuple)):
        arrays = [np.asarray(value) for value in x]
        flat = arrays
        names = [f"input {i}" for i in range(len(arrays))]
    else:
        arrays = np.asarray(x)
        flat = [arrays]
        names = ["x"]
    rows = {array.shape[0] if array.ndim else None for array in flat}
    if len(rows) != 1 or None in rows:
        raise ValueError(
            "Invalid value received for argument `x`. Expected arrays with the "
            "same number of rows (batch first). Received shapes: "
            f"{[array.shape for array in flat]}"
        )
    if inputs is not None:
        structure = internals.input_structure(model)
        if isinstance(structure, dict) and isinstance(arrays, dict):
            expected = dict(structure)  # dict-input models are called by their keys
        else:
            expected = {tensor.name: tensor for tensor in inputs}
        pairs = (
            [(expected.get(name), name, array) for name, array in arrays.items()]
            if isinstance(arrays, dict)
            else list(zip(inputs, names, flat))
        )
        if not isinstance(arrays, dict) and len(flat) != len(inputs):
            raise ValueError(
                f"Model '{model.name}' expects {len(inputs)} input(s), "
                f"received {len(flat)} (shapes {[a.shape for a in flat]})."
            )
        for tensor, name, array in pairs:
            if tensor is None:
                raise ValueError(
                    f"Unexpected input '{name}': model '{model.name}' has "
                    f"inputs {sorted(expected)}."
                )
            _check_shape(model, tensor, name, array)
        missing = sorted(set(expected) - set(arrays)) if isinstance(arrays, dict) else []
        if missing:
            raise ValueError(
                f"Missing input(s) {missing}: model '{model.name}' has inputs "
                f"{sorted(expected)}, received {sorted(arrays)}."
            )
    for name, array in zip(names, flat):
        if array.dtype.kind == "f" and np.isnan(array).any():
            bad_rows = np.unique(np.nonzero(np.isnan(array))[0])[:10].tolist()
            raise ValueError(
                f"Invalid value received for argument `x`: {name} contains "
                f"NaN (rows {bad_rows}...). Impute or drop them first."
            )
    return arrays


def _check_shape(model, tensor, name, array):
    expected = tuple(tensor.shape)
    received = array.shape
    compatible = len(expected) == len(received) and all(
        e is None or e == r for e, r in zip(expected[1:], received[1:])
    )
    if not compatible:
        raise ValueError(
            f"Invalid value received for argument `x`: {name} has shape "
            f"{received}, model '{model.name}' expects {expected} "
            "(None = any size)."
        )


def _progress_bar(verbose, total_calls):
    if verbose == "auto":
        verbose = 1 if total_calls >= 10 else 0
    if not verbose:
        return None
    return keras.utils.Progbar(total_calls, unit_name="call")
