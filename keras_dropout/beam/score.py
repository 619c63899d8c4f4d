"""`score`: files of examples in, one record of MC dropout statistics per example out (Beam).

The pipeline behind `keras-dropout score`. Reading is Beam's: with a key column, Beam's own
sources (`ReadFromParquet` splits files by row group, `ReadFromText` by byte range;
`ReadFromTFRecord` reads a file whole); without one, each file is read in order (Beam's
`FileSystems`) so that an example's key is its position, and files are spread across workers.
Batches of examples are reshuffled before `RunInference`, so scoring is spread across workers
however the files are sized.
"""

import json
import os
import sys
import time

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.ml.inference.base import RunInference
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.options.pipeline_options import StandardOptions

from keras_dropout.beam import records
from keras_dropout.beam.handler import MCModelHandler
from keras_dropout.beam.handler import row_id

OUTPUT_FORMATS = ("parquet", "jsonl")
_OUTPUT_EXTENSIONS = {".parquet": "parquet", ".jsonl": "jsonl", ".json": "jsonl"}
_METRICS_NAMESPACE = "keras_dropout.score"
PROGRESS_INTERVAL_S = 10.0


def score(
    model_path,
    input_pattern,
    output_path,
    *,
    num_samples=50,
    seed=0,
    task="auto",
    from_logits=False,
    outputs=("mean", "variance"),
    interval_level=0.95,
    jit_compile="auto",
    key_column=None,
    feature_columns=None,
    input_format=None,
    output_format=None,
    num_shards=0,
    min_batch_size=None,
    max_batch_size=None,
    pipeline_args=None,
    variance_output=None,
    variance_kind=None,
):
    """Scores every example of `input_pattern` with MC dropout, writing `output_path`.

    Args:
        model_path: a `.keras` file (any filesystem Beam reads).
        input_pattern: file or glob of TFRecord (tf.train.Example), Parquet
            or CSV files (with a header row).
        output_path: e.g. `scores.parquet` or `scores.jsonl`: written as
            Beam shards `scores-00000-of-00002.parquet`, ...; records that
            cannot be scored go to `scores_rejected-*.jsonl` with the reason.
        num_samples, seed, task, from_logits, outputs, interval_level,
            jit_compile, variance_output, variance_kind: as in
            `MCModelHandler`.
        key_column: column holding each example's key (int or string: typed
            columns keep their type; a CSV column whose first key is an
            integer holds integers). Without it the key is the example's
            position (row number in a single file; see
            `records.FILE_KEY_STRIDE` for several).
        feature_columns: columns feeding a single-input model, in order
            (default: the columns named after the model's inputs, else all
            non-key columns).
        input_format: "tfrecord", "parquet" or "csv" (default: the extension).
        output_format: "parquet" or "jsonl" (default: the extension).
        num_shards: output shards (0: the runner decides).
        min_batch_size, max_batch_size: Beam's batching of examples per
            `predict_mc` call.
        pipeline_args: Beam pipeline options as command-line flags, e.g.
            `["--runner=DataflowRunner", "--project=...", ...]`; DirectRunner by default.

    Returns:
        A dict: `rows` scored, `errors` (records not scored), `seconds`, and the
        `output` and `errors_output` file patterns.

    Raises:
        ValueError, FileNotFoundError, FileExistsError: bad arguments, input or
            output, found before the pipeline starts.
        RuntimeError: the pipeline failed.
    """
    options = _pipeline_options(pipeline_args)
    fmt = records.input_format(input_pattern, input_format)
    output_format, prefix, suffix = _output_target(output_path, output_format)
    errors_prefix = f"{prefix}_rejected"
    _refuse_existing_output(f"{prefix}-*-of-*{suffix}", f"{errors_prefix}-*.jsonl")
    paths = records.match_files(input_pattern)
    handler = MCModelHandler(
        model_path,
        num_samples,
        seed=seed,
        task=task,
        from_logits=from_logits,
        outputs=outputs,
        interval_level=interval_level,
        jit_compile=jit_compile,
        min_batch_size=min_batch_size,
        max_batch_size=max_batch_size,
        variance_output=variance_output,
        variance_kind=variance_kind,
    )
    # The launcher loads the model and scores the first example itself, so a wrong
    # file, column or setting fails here, at once, not on a cluster's workers.
    scorer = handler.load_model()
    header = _common_csv_header(paths) if fmt == "csv" else None
    decode = records.RecordDecoder(fmt, header)
    first = _first_record(paths, fmt, decode)
    kind = records.key_kind(fmt, first.get(key_column)) if key_column else None
    first_key = records.record_key(first, key_column, kind) if key_column else 0
    columns = [column for column in (header or list(first)) if column != key_column]
    plan = records.FeaturePlan.for_model(
        scorer.model, columns, first, feature_columns=feature_columns, ordered=fmt != "tfrecord"
    )
    key_name = key_column or "key"
    statistics = scorer.score([first_key], [plan(first)])[0]
    if key_name in statistics:
        raise ValueError(f"Key column {key_name!r} has the name of an output statistic: rename it.")

    pipeline = beam.Pipeline(options=options)
    to_example = _ToExample(plan, decode, key_column, kind, type(first_key))
    if key_column:
        used_columns = sorted({key_column, *(column for group in plan.columns for column in group)})
        raw = pipeline | "Read" >> _source(fmt, input_pattern, used_columns)
    else:
        raw = (
            pipeline
            | "Files" >> beam.Create(list(enumerate(paths)))
            | "SpreadFiles" >> beam.Reshuffle()
            | "ReadInOrder" >> beam.FlatMap(records.read_positioned, fmt)
        )
    examples = raw | "ToExamples" >> beam.ParDo(to_example).with_outputs("errors", main="examples")
    rows = (
        examples.examples
        # Batches, not examples, are spread across workers: a reshuffle costs per element.
        | "Batch" >> beam.BatchElements(**handler.batch_elements_kwargs())
        | "SpreadBatches" >> beam.Reshuffle()
        | "MCDropout" >> RunInference(handler.with_no_batching())
        | "ToRows" >> beam.ParDo(_ToRow(key_name))
    )
    if output_format == "parquet":
        schema = _parquet_schema(key_name, first_key, statistics)
        rows | "Write" >> beam.io.WriteToParquet(
            prefix, schema, codec="snappy", file_name_suffix=suffix, num_shards=num_shards
        )
    else:
        rows | "Write" >> beam.io.WriteToText(prefix, file_name_suffix=suffix, num_shards=num_shards, coder=_JsonCoder())
    # Not "{prefix}-errors": a sink's finalize deletes files matching its own shard glob
    # ("{prefix}-*-of-N"), which would take the other sink's shards with it.
    examples.errors | "WriteRejected" >> beam.io.WriteToText(
        errors_prefix, file_name_suffix=".jsonl", coder=_JsonCoder(), skip_if_empty=True
    )

    runner = options.view_as(StandardOptions).runner
    print(f"score: {len(paths)} {fmt} file(s) -> {prefix}-*{suffix} ({runner})", file=sys.stderr)
    start = time.perf_counter()
    try:
        result = pipeline.run()
        result.wait_until_finish()
    except Exception as error:  # whatever the runner raises: a failed job, not a bad argument
        raise RuntimeError(f"The scoring pipeline failed: {error}") from error
    seconds = time.perf_counter() - start
    summary = {
        "rows": _counter(result, "rows_scored"),
        "errors": _counter(result, "records_rejected"),
        "seconds": seconds,
        "output": f"{prefix}-*{suffix}",
        "errors_output": f"{errors_prefix}-*.jsonl",
    }
    if not summary["errors"]:
        # A runner without metrics reports none: the rejected records' files tell.
        summary["errors"] = sum(1 for path in _existing(summary["errors_output"]) for _ in _lines(path))
    print(
        f"score: {summary['rows']} rows scored in {seconds:.1f} s "
        f"({summary['rows'] / max(seconds, 1e-9):.0f} rows/s); {summary['errors']} rejected"
        + (f" (reasons in {summary['errors_output']})" if summary["errors"] else ""),
        file=sys.stderr,
    )
    return summary


class _ToExample(beam.DoFn):
    """Raw records to `(key, features)`; one that cannot be scored goes to "errors" with
    its key (when it has one) and the reason."""

    def __init__(self, plan, decode, key_column, key_kind, key_type):
        self._plan = plan
        self._decode = decode
        self._key_column = key_column
        self._key_kind = key_kind
        self._key_type = key_type
        self._rejected = Metrics.counter(_METRICS_NAMESPACE, "records_rejected")

    def process(self, element):
        key, raw = (None, element) if self._key_column else element
        try:
            record = self._decode(raw)
            if record is None:
                return
            if self._key_column:
                key = records.record_key(record, self._key_column, self._key_kind)
                if type(key) is not self._key_type:  # the output's key column has one type
                    raise ValueError(
                        f"Key {key!r} is a {type(key).__name__}, the first record's a {self._key_type.__name__}."
                    )
                row_id(key)
            features = self._plan(record)
        except ValueError as error:
            self._rejected.inc()
            yield beam.pvalue.TaggedOutput("errors", {"key": key, "error": str(error)})
            return
        yield key, features


class _ToRow(beam.DoFn):
    """`(key, PredictionResult)` to an output record; counts rows and reports progress."""

    def __init__(self, key_name):
        self._key_name = key_name
        self._scored = Metrics.counter(_METRICS_NAMESPACE, "rows_scored")

    def setup(self):
        self._count = 0
        self._start = self._last_report = time.monotonic()

    def process(self, element):
        key, result = element
        self._scored.inc()
        self._count += 1
        now = time.monotonic()
        if now - self._last_report >= PROGRESS_INTERVAL_S:
            self._last_report = now
            print(
                f"score: {self._count} rows scored by worker {os.getpid()} "
                f"({self._count / (now - self._start):.0f} rows/s)",
                file=sys.stderr,
                flush=True,
            )
        row = {self._key_name: key}
        row.update((name, value.tolist()) for name, value in result.inference.items())
        yield row


class _JsonCoder(beam.coders.Coder):
    """One JSON document per element (a line of a JSON-lines file)."""

    def encode(self, value):
        return json.dumps(value).encode("utf-8")

    def decode(self, encoded):
        return json.loads(encoded)

    def is_deterministic(self):
        return True


def _pipeline_options(pipeline_args):
    """Beam's PipelineOptions of the flags `score` does not know, which must all be Beam's."""
    args = list(pipeline_args or [])
    loose = [arg for arg in args if not arg.startswith("-")]
    if loose:
        raise ValueError(
            f"Unexpected argument(s) {loose}: write Beam pipeline options as --flag=value "
            "(a value after a space is taken for an argument)."
        )
    options = PipelineOptions(args)
    unknown = sorted(
        set(options.get_all_options(retain_unknown_options=True)) - set(options.get_all_options())
    )
    if unknown:
        # Beam would drop them with a warning: a mistyped --num_sample would run with 50.
        given = [arg.split("=")[0] for arg in args if arg.lstrip("-").split("=")[0].replace("-", "_") in unknown]
        raise ValueError(f"Unknown option(s) {given or unknown}: neither score's nor Beam's.")
    if not options.view_as(StandardOptions).runner:
        options.view_as(StandardOptions).runner = "DirectRunner"
    return options


def _refuse_existing_output(*patterns):
    found = [path for pattern in patterns for path in _existing(pattern)]
    if found:
        raise FileExistsError(
            f"Output files exist already ({found[:3]}{'...' if len(found) > 3 else ''}): an earlier run's "
            "shards would mix with this run's. Remove them or choose another OUTPUT."
        )


def _existing(pattern):
    return [metadata.path for metadata in FileSystems.match([pattern])[0].metadata_list]


def _lines(path):
    with FileSystems.open(path) as handle:
        yield from iter(handle.readline, b"")


def _source(fmt, pattern, columns):
    if fmt == "tfrecord":
        return beam.io.ReadFromTFRecord(pattern)
    if fmt == "parquet":
        return beam.io.ReadFromParquet(pattern, columns=columns)
    # Line-based, so quoted fields must not hold newlines.
    return beam.io.ReadFromText(pattern, skip_header_lines=1)


def _common_csv_header(paths):
    """The header all CSV files share (Beam's line reader maps every file by one header)."""
    header = records.csv_header(paths[0])
    for path in paths[1:]:
        if records.csv_header(path) != header:
            raise ValueError(
                f"CSV files {paths[0]!r} and {path!r} have different headers: score files of one layout together."
            )
    return header


def _first_record(paths, fmt, decode):
    """The first record of the input, decoded."""
    for path in paths:
        for raw in records.read_file(path, fmt):
            record = decode(raw)
            if record is not None:
                return record
    raise ValueError(f"The input files ({len(paths)}) hold no record.")


def _output_target(output_path, output_format):
    stem, extension = os.path.splitext(output_path)
    known = _OUTPUT_EXTENSIONS.get(extension.lower())
    if output_format is None:
        if known is None:
            raise ValueError(
                f"Cannot tell the output format of {output_path!r}: end it in .parquet or .jsonl, "
                "or pass --output_format."
            )
        output_format = known
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"Unknown output format {output_format!r}: expected one of {list(OUTPUT_FORMATS)}.")
    if known not in (None, output_format):
        raise ValueError(f"OUTPUT {output_path!r} ends in {extension}, but --output_format is {output_format}.")
    if known is None:
        return output_format, output_path, f".{output_format}"
    return output_format, stem, extension


def _parquet_schema(key_name, key, statistics):
    import pyarrow

    fields = [(key_name, pyarrow.int64() if isinstance(key, int) else pyarrow.string())]
    for name, value in statistics.items():
        kind = pyarrow.from_numpy_dtype(value.dtype)
        for _ in range(value.ndim):
            kind = pyarrow.list_(kind)
        fields.append((name, kind))
    return pyarrow.schema(fields)


def _counter(result, name):
    found = result.metrics().query(MetricsFilter().with_namespace(_METRICS_NAMESPACE).with_name(name))
    return int(sum(counter.result for counter in found["counters"]))
