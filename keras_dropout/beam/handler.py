"""`MCModelHandler`: Monte Carlo dropout statistics through Apache Beam's RunInference."""

import hashlib
import numbers
import os
import shutil
import tempfile

import numpy as np
from apache_beam.ml.inference.base import ModelHandler
from apache_beam.ml.inference.base import PredictionResult

# Per-example statistics a handler can return, named as in the `mc` serving signature;
# a multi-output model prefixes them with the output's name (`<output>_mean`).
STATISTICS = (
    "mean",
    "variance",
    "stddev",
    "aleatoric_variance",
    "epistemic_variance",
    "interval_lower",
    "interval_upper",
    "predictive_entropy",
    "expected_entropy",
    "mutual_information",
    "variation_ratio",
)
BEAM_MAX_BATCH_SIZE = 10000  # BatchElements' default


class MCModelHandler(ModelHandler):
    """A RunInference model handler giving MC dropout statistics per example.

    Elements are `(key, features)` pairs: `features` is one example (a NumPy
    array without the batch dimension, or a dict of them for a model with
    several or named inputs); `key` identifies it and is the row id
    `kd.predict_mc` folds into the masks (an int, or a str/bytes key, which
    is hashed to a 64-bit id). An example's statistics therefore depend only
    on (seed, key, features): the same whatever runner, batch, bundle or
    worker computes them. Results are `(key, PredictionResult)` whose
    `inference` is a dict of the requested statistics for that example.

    The model is loaded once per worker process from `model_uri` (a
    `.keras` file on any filesystem Beam reads: local, gs://, s3://, ...);
    with `large_model=True` or `model_copies=N` Beam shares the loaded
    models between the processes of a machine instead. Beam's batching
    knobs (`min_batch_size`, `max_batch_size`, `max_batch_duration_secs`)
    size the batches; `predict_mc` bounds the memory of each
    (`chunk_size`).

    Args:
        model_uri: path or URI of a `.keras` model file. Custom layers must
            be importable and registered on the workers
            (keras-dropout's own are).
        num_samples: Monte Carlo samples per example (1 to 100000).
        seed: int; the same seed gives the same statistics.
        task: "auto", "regression" or "classification", as in `predict_mc`.
        from_logits: the model outputs logits (classification).
        outputs: statistics to return, from `STATISTICS`
            (`aleatoric_variance` for Gaussian outputs only).
        variance_output, variance_kind: as in `predict_mc`: a stock model's
            output holding another's (log-)variance (a
            `kd.layers.GaussianHead` output needs neither).
        interval_level: level of `interval_lower` / `interval_upper`.
        jit_compile: as in `predict_mc` ("auto", True or False).
        chunk_size: as in `predict_mc`: (row, sample) pairs per model call.
        min_batch_size, max_batch_size, max_batch_duration_secs: Beam's
            batching of elements into one `predict_mc` call. `min_batch_size`
            defaults to the rows of one model call (`chunk_size //
            num_samples`): every batch is padded to whole calls, so smaller
            batches cost as much; `max_batch_size` to Beam's 10000.
        large_model, model_copies: Beam's sharing of the loaded model across
            the processes of a worker machine.

    Returns:
        Through `RunInference`: `(key, PredictionResult(example, inference,
        model_id))` per element, `inference` mapping each statistic name to
        a NumPy array (a scalar array for per-example measures such as
        `predictive_entropy`).

    Example:

    >>> import apache_beam as beam, keras, numpy as np, tempfile, os
    >>> from apache_beam.ml.inference.base import RunInference
    >>> from keras_dropout.beam import MCModelHandler
    >>> path = os.path.join(tempfile.mkdtemp(), "model.keras")
    >>> keras.Sequential([keras.Input((3,)), keras.layers.Dense(8),
    ...                   keras.layers.Dropout(0.5), keras.layers.Dense(1)]).save(path)
    >>> with beam.Pipeline() as pipeline:
    ...     _ = (pipeline
    ...          | beam.Create([(7, np.ones(3, "float32")), (8, np.zeros(3, "float32"))])
    ...          | RunInference(MCModelHandler(path, num_samples=20, seed=0))
    ...          | beam.Map(lambda kv: print(kv[0], kv[1].inference["mean"].shape)))
    7 (1,)
    8 (1,)
    """

    def __init__(
        self,
        model_uri,
        num_samples=50,
        *,
        seed=0,
        task="auto",
        from_logits=False,
        outputs=("mean", "variance"),
        interval_level=0.95,
        jit_compile="auto",
        chunk_size=8192,
        min_batch_size=None,
        max_batch_size=None,
        max_batch_duration_secs=None,
        large_model=False,
        model_copies=None,
        variance_output=None,
        variance_kind=None,
    ):
        from keras_dropout import mc

        if not isinstance(model_uri, (str, os.PathLike)) or not str(model_uri):
            raise ValueError(
                "Invalid value received for argument `model_uri`. Expected the "
                f"path of a .keras file. Received: model_uri={model_uri!r}"
            )
        outputs = (outputs,) if isinstance(outputs, str) else tuple(outputs)
        unknown = [name for name in outputs if name not in STATISTICS]
        if not outputs or unknown:
            raise ValueError(
                "Invalid value received for argument `outputs`. Expected names "
                f"from {list(STATISTICS)}. Received: outputs={outputs!r}"
            )
        mc._validate_task(task)
        if not (isinstance(interval_level, numbers.Real) and 0 < interval_level < 1):
            raise ValueError(
                "Invalid value received for argument `interval_level`. Expected "
                f"a float in (0, 1). Received: interval_level={interval_level!r}"
            )
        if jit_compile not in ("auto", True, False):
            raise ValueError(
                "Invalid value received for argument `jit_compile`. Expected "
                f"True, False or 'auto'. Received: jit_compile={jit_compile!r}"
            )
        num_samples = mc._validate_num_samples(num_samples)
        chunk_size = mc._validate_positive_int(chunk_size, "chunk_size")
        for name, value in (("min_batch_size", min_batch_size), ("max_batch_size", max_batch_size)):
            if value is not None:
                mc._validate_positive_int(value, name)
        if min_batch_size and max_batch_size and min_batch_size > max_batch_size:
            raise ValueError(
                "Invalid value received for arguments `min_batch_size` and "
                f"`max_batch_size`: {min_batch_size} > {max_batch_size}."
            )
        if min_batch_size is None:
            # A batch smaller than one model call costs a whole call (see MCScorer.score).
            min_batch_size = min(mc.full_call_rows(num_samples, chunk_size), max_batch_size or BEAM_MAX_BATCH_SIZE)
        max_batch_size = max_batch_size or max(min_batch_size, BEAM_MAX_BATCH_SIZE)
        super().__init__(
            min_batch_size=min_batch_size,
            max_batch_size=max_batch_size,
            max_batch_duration_secs=max_batch_duration_secs,
            large_model=large_model,
            model_copies=model_copies,
        )
        self._model_uri = str(model_uri)
        self._settings = dict(
            num_samples=num_samples,
            seed=mc._validate_seed(seed),
            task=task,
            from_logits=bool(from_logits),
            outputs=outputs,
            interval_level=float(interval_level),
            jit_compile=jit_compile,
            chunk_size=chunk_size,
            variance_output=variance_output,
            variance_kind=variance_kind,
            # No batch exceeds max_batch_size rows: padding beyond it would be waste.
            pad_rows_to=min(mc.full_call_rows(num_samples, chunk_size), max_batch_size),
        )

    def load_model(self):
        """Loads the model (once per worker process): returns its `MCScorer`."""
        return MCScorer(load_keras_model(self._model_uri), **self._settings)

    def run_inference(self, batch, model, inference_args=None):
        """Scores a batch of `(key, features)` elements in one `predict_mc` call."""
        keys = [key for key, _ in batch]
        examples = [features for _, features in batch]
        statistics = model.score(keys, examples)
        return [
            (key, PredictionResult(example, inference, model_id=self._model_uri))
            for key, example, inference in zip(keys, examples, statistics)
        ]

    def get_num_bytes(self, batch):
        """Bytes of a batch's features (Beam's default pickles the whole batch to count them)."""
        return sum(
            sum(np.asarray(a).nbytes for a in features.values()) if isinstance(features, dict) else np.asarray(features).nbytes
            for _, features in batch
        )

    def get_metrics_namespace(self):
        return "keras_dropout.MCModelHandler"


class MCScorer:
    """A loaded model and the settings of one handler: what each worker holds.

    `score` does the whole per-batch computation, so a model Beam shares
    across processes (whose calls go through a proxy) works the same way.
    """

    def __init__(
        self,
        model,
        *,
        num_samples,
        seed,
        task,
        from_logits,
        outputs,
        interval_level,
        jit_compile,
        chunk_size,
        pad_rows_to,
        variance_output=None,
        variance_kind=None,
    ):
        self.model = model
        self._variance_output = variance_output
        self._variance_kind = variance_kind
        self._num_samples = num_samples
        self._seed = seed
        self._task = task
        self._from_logits = from_logits
        self._outputs = outputs
        self._interval_level = interval_level
        self._wants_interval = any(name.startswith("interval_") for name in outputs)
        self._jit_compile = jit_compile
        self._chunk_size = chunk_size
        self._pad_rows_to = pad_rows_to

    def score(self, keys, examples):
        """Statistics of each example: a list of `{statistic name: array}`."""
        from keras_dropout.mc import predict_mc

        if not keys:
            return []
        inputs = stack_examples(keys, examples)
        row_ids = np.array([row_id(key) for key in keys], np.int64)
        # Beam's batches come in every size; padded to whole model calls, they all run one
        # compiled function instead of tracing (and timing) one per power-of-two bucket.
        padding = -len(keys) % self._pad_rows_to
        if padding:
            inputs = _repeat_last_row(inputs, padding)
            row_ids = _repeat_last_row(row_ids, padding)
        result = predict_mc(
            self.model,
            inputs,
            self._num_samples,
            seed=self._seed,
            task=self._task,
            from_logits=self._from_logits,
            # Quantiles sort every sample: computed only when asked for (half a small call's cost).
            interval_levels=(self._interval_level,) if self._wants_interval else (),
            jit_compile=self._jit_compile,
            verbose=0,
            chunk_size=self._chunk_size,
            row_ids=row_ids,
            variance_output=self._variance_output,
            variance_kind=self._variance_kind,
        )
        predictions = result if isinstance(result, dict) else {None: result}
        columns = {}
        for output, prediction in predictions.items():
            for statistic in self._outputs:
                name = statistic if output is None else f"{output}_{statistic}"
                columns[name] = _statistic(prediction, statistic, self._interval_level)[: len(keys)]
        return [{name: column[row] for name, column in columns.items()} for row in range(len(keys))]


def _repeat_last_row(arrays, count):
    if isinstance(arrays, dict):
        return {name: _repeat_last_row(array, count) for name, array in arrays.items()}
    return np.concatenate([arrays, np.repeat(arrays[-1:], count, axis=0)])


def _statistic(prediction, name, interval_level):
    if name == "interval_lower":
        return prediction.interval(interval_level)[0]
    if name == "interval_upper":
        return prediction.interval(interval_level)[1]
    return np.asarray(getattr(prediction, name))


def row_id(key):
    """The `predict_mc` row id of an element key: ints as they are, str/bytes hashed."""
    if isinstance(key, numbers.Integral) and not isinstance(key, (bool, np.bool_)):
        if not -(2**63) <= key < 2**63:
            raise ValueError(f"Element key {key!r} is outside [-2**63, 2**63): keys are 64-bit row ids.")
        return int(key)
    if isinstance(key, str):
        key = key.encode("utf-8")
    if isinstance(key, bytes):
        # A stable hash (Python's hash() differs per process): the same key gets
        # the same masks on every worker.
        return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little", signed=True)
    raise ValueError(
        f"Element key {key!r} ({type(key).__name__}) is not an int, str or bytes. Elements of "
        "MCModelHandler are (key, features) pairs whose key is the example's row id."
    )


def stack_examples(keys, examples):
    """Stacks single examples (arrays, or dicts of them) into one batch, checking each."""
    first = examples[0]
    if isinstance(first, dict):
        names = sorted(first)
        for key, example in zip(keys, examples):
            if not isinstance(example, dict) or sorted(example) != names:
                raise ValueError(
                    f"Example {key!r} has inputs {sorted(example) if isinstance(example, dict) else type(example)}, "
                    f"the batch's first example {names}: every example needs the same inputs."
                )
        return {name: _stack([example[name] for example in examples], keys, name) for name in first}
    if isinstance(first, (list, tuple)):
        raise ValueError(
            f"Example {keys[0]!r} is a {type(first).__name__}: pass one array per example, or a dict "
            "keyed by input name for a model with several inputs."
        )
    return _stack(examples, keys, None)


def _stack(arrays, keys, name):
    arrays = [np.asarray(array) for array in arrays]
    where = "" if name is None else f" input '{name}'"
    shape = arrays[0].shape
    for key, array in zip(keys, arrays):
        if array.shape != shape:
            raise ValueError(
                f"Example {key!r}{where} has shape {array.shape}, the batch's first example {shape}: "
                "examples are batched together, so pad variable-length inputs to one length."
            )
        if array.dtype.kind == "f" and np.isnan(array).any():
            raise ValueError(f"Example {key!r}{where} contains NaN: impute or drop it before scoring.")
    return np.stack(arrays)


def load_keras_model(uri):
    """`keras.saving.load_model` of a `.keras` file on any filesystem Beam reads."""
    import keras

    import keras_dropout.layers  # noqa: F401  (registers the layers a .keras file may hold)
    import keras_dropout.losses  # noqa: F401  (and the loss of a compiled one)

    if os.path.exists(uri):
        return keras.saving.load_model(uri)
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    if not FileSystems.exists(uri):
        raise FileNotFoundError(f"No model file at {uri!r}.")
    with tempfile.TemporaryDirectory() as directory:
        local = os.path.join(directory, os.path.basename(uri.rstrip("/")) or "model.keras")
        with FileSystems.open(uri, compression_type=CompressionTypes.UNCOMPRESSED) as source, open(local, "wb") as target:
            shutil.copyfileobj(source, target)
        return keras.saving.load_model(local)
