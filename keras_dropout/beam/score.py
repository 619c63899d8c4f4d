"""`score`: files of examples in, one record of MC dropout statistics per example out (Beam).

The pipeline behind `keras-dropout score`. Reading is Beam's: with a key column, Beam's own
sources (`ReadFromTFRecord`, `ReadFromParquet`, `ReadFromText`), which split files across workers;
without one, each file is read in order (Beam's `FileSystems`) so that an example's key is its
position, and files are spread across workers. Examples are reshuffled before `RunInference`, so
scoring is spread across workers however the files are sized.
"""

import json
import os
import sys
import time

import apache_beam as beam
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
    key_column=None,
    feature_columns=None,
    input_format=None,
    output_format=None,
    num_shards=0,
    min_batch_size=None,
    max_batch_size=None,
    pipeline_args=None,
):
    """Scores every example of `input_pattern` with MC dropout, writing `output_path`.

    Args:
        model_path: a `.keras` file (any filesystem Beam reads).
        input_pattern: file or glob of TFRecord (tf.train.Example), Parquet
            or CSV files (with a header row).
        output_path: e.g. `scores.parquet` or `scores.jsonl`: written as
            Beam shards `scores-00000-of-00002.parquet`, ...; records that
            cannot be scored go to `scores_rejected-*.jsonl` with the reason.
        num_samples, seed, task, from_logits, outputs, interval_level: as in
            `MCModelHandler`.
        key_column: column holding each example's key (int or string). Without
            it the key is the example's position (row number in a single file;
            see `records.FILE_KEY_STRIDE` for several).
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
    """
    fmt = records.input_format(input_pattern, input_format)
    output_format, prefix, suffix = _output_target(output_path, output_format)
    paths = records.match_files(input_pattern)
    handler = MCModelHandler(
        model_path,
        num_samples,
        seed=seed,
        task=task,
        from_logits=from_logits,
        outputs=outputs,
        interval_level=interval_level,
        min_batch_size=min_batch_size,
        max_batch_size=max_batch_size,
    )
    # The launcher loads the model and scores the first example itself, so a wrong
    # file, column or setting fails here, at once, not on a cluster's workers.
    scorer = handler.load_model()
    first, header = _first_record(paths, fmt)
    columns = [column for column in (header or list(first)) if column != key_column]
    plan = records.FeaturePlan.for_model(
        scorer.model, columns, feature_columns=feature_columns, ordered=fmt != "tfrecord"
    )
    key_name = key_column or "key"
    first_key = records.record_key(dict(first), key_column) if key_column else 0
    statistics = scorer.score([first_key], [plan({k: v for k, v in first.items() if k != key_column})])[0]
    if key_name in statistics:
        raise ValueError(f"Key column {key_name!r} has the name of an output statistic: rename it.")

    options = PipelineOptions(list(pipeline_args or []))
    if not options.view_as(StandardOptions).runner:
        options.view_as(StandardOptions).runner = "DirectRunner"
    pipeline = beam.Pipeline(options=options)
    to_example = _ToExample(plan, key_column, _decoder(fmt, header))
    if key_column:
        raw = pipeline | "Read" >> _source(fmt, input_pattern)
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
        rows | "Write" >> beam.io.WriteToParquet(
            prefix, _parquet_schema(key_name, first_key, statistics), file_name_suffix=suffix, num_shards=num_shards
        )
    else:
        rows | "Write" >> beam.io.WriteToText(
            prefix, file_name_suffix=suffix, num_shards=num_shards, coder=_JsonCoder()
        )
    # Not "{prefix}-errors": a sink's finalize deletes files matching its own shard glob
    # ("{prefix}-*-of-N"), which would take the other sink's shards with it.
    examples.errors | "WriteErrors" >> beam.io.WriteToText(
        f"{prefix}_rejected", file_name_suffix=".jsonl", coder=_JsonCoder(), skip_if_empty=True
    )

    print(
        f"score: {len(paths)} {fmt} file(s) -> {prefix}-*{suffix} ({options.view_as(StandardOptions).runner})",
        file=sys.stderr,
    )
    start = time.perf_counter()
    result = pipeline.run()
    result.wait_until_finish()
    seconds = time.perf_counter() - start
    summary = {
        "rows": _counter(result, "rows_scored"),
        "errors": _counter(result, "records_rejected"),
        "seconds": seconds,
        "output": f"{prefix}-*{suffix}",
        "errors_output": f"{prefix}_rejected-*.jsonl",
    }
    print(
        f"score: {summary['rows']} rows scored in {seconds:.1f} s "
        f"({summary['rows'] / max(seconds, 1e-9):.0f} rows/s); {summary['errors']} rejected"
        + (f" (reasons in {summary['errors_output']})" if summary["errors"] else ""),
        file=sys.stderr,
    )
    return summary


class _ToExample(beam.DoFn):
    """Records to `(key, features)`; a record that cannot be scored goes to "errors"."""

    def __init__(self, plan, key_column, decode):
        self._plan = plan
        self._key_column = key_column
        self._decode = decode
        self._rejected = Metrics.counter(_METRICS_NAMESPACE, "records_rejected")

    def process(self, element):
        key, record = (None, element) if self._key_column else element
        try:
            record = dict(self._decode(record))
            if self._key_column:
                key = records.record_key(record, self._key_column)
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
    def encode(self, value):
        return json.dumps(value).encode("utf-8")

    def decode(self, encoded):
        return json.loads(encoded)

    def is_deterministic(self):
        return True


def _source(fmt, pattern):
    if fmt == "tfrecord":
        return beam.io.ReadFromTFRecord(pattern)
    if fmt == "parquet":
        return beam.io.ReadFromParquet(pattern)
    # Line-based, so quoted fields must not hold newlines.
    return beam.io.ReadFromText(pattern, skip_header_lines=1)


def _decoder(fmt, header):
    if fmt == "tfrecord":
        return _ExampleDecoder()
    if fmt == "csv":
        return _CsvDecoder(header)
    return _Identity()


class _Identity:
    def __call__(self, record):
        return record


class _ExampleDecoder:
    def __call__(self, record):
        return record if isinstance(record, dict) else records.parse_example(record)


class _CsvDecoder:
    def __init__(self, header):
        self._header = header

    def __call__(self, record):
        return record if isinstance(record, dict) else records.csv_record(self._header, record)


def _first_record(paths, fmt):
    """The first record of the input, and the CSV header (None for other formats)."""
    for path in paths:
        first = next(records.read_file(path, fmt), None)
        if first is not None:
            return first, records.csv_header(path) if fmt == "csv" else None
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
