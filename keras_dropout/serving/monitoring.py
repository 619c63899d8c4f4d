"""Server metrics in TF Serving's names, exposed for Prometheus (`--monitoring_config_file`).

TF Serving exports its TensorFlow monitoring metrics at the REST port under the path of
`MonitoringConfig.prometheus_config` (default `/monitoring/prometheus/metrics`), named after
the metric with "/" turned into ":" and counters without a `_total` suffix. This server keeps:

- `:tensorflow:serving:request_count{model_name,status}`: requests by canonical status code;
- `:tensorflow:serving:request_latency{model_name,API,entrypoint}`: histogram of request wall
  time in microseconds (API "predict", "classify", "regress", "multi_inference",
  "get_model_metadata", "get_model_status"; entrypoint "GRPC" or "REST"), TF Serving's buckets;
- `:tensorflow:serving:request_example_counts{model}` and
  `:tensorflow:serving:request_example_count_total{model}`: tf.Examples per Classify/Regress/
  MultiInference request;
- `:tensorflow:cc:saved_model:load_attempt_count{model_path,status}` ("success" / "fail") and
  `:tensorflow:cc:saved_model:load_latency{model_path}` (microseconds): version loads;
- per signature, which TF Serving does not break out:
  `:keras_dropout:serving:signature_request_count{model_name,signature_name,status}` and
  `:keras_dropout:serving:signature_request_latency{model_name,signature_name}` (microseconds);
- with `--enable_batching`, `:keras_dropout:serving:batch_size{model_name,signature_name}`:
  histogram of the rows of each merged call (padding included).

Values live in `prometheus_client` metrics on a registry of the server's own (several servers
may share a process); `exposition()` writes them in TF Serving's text layout, which
`prometheus_client.parser` reads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.utils import floatToGoString

DEFAULT_PATH = "/monitoring/prometheus/metrics"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# TF Serving's request latency buckets: exponential, scale 10 us, factor 1.8, 33 buckets.
LATENCY_BUCKETS_US = tuple(10 * 1.8**i for i in range(33))
# tf.Examples per request: 1, 2, 4, ..., 16384.
EXAMPLE_COUNT_BUCKETS = tuple(2.0**i for i in range(15))


@dataclasses.dataclass
class RequestRecord:
    """What one request reports; filled in by the handler while it runs."""

    model_name: str = ""
    signature_name: str = ""
    code: str = "OK"


class Metrics:
    """The server's metrics. Thread-safe.

    Example:
        metrics = Metrics()
        with metrics.request("predict", "GRPC") as record:
            record.model_name, record.signature_name = "demo", "mc"
            ...                       # raising a ServingError records its code
        text = metrics.exposition()
    """

    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=True)
        self._request_count = Counter(
            ":tensorflow:serving:request_count",
            "The total number of requests.",
            ["model_name", "status"],
            registry=self.registry,
        )
        self._request_latency = Histogram(
            ":tensorflow:serving:request_latency",
            "Distribution of wall time (in microseconds) for Tensorflow Serving request.",
            ["model_name", "API", "entrypoint"],
            buckets=LATENCY_BUCKETS_US,
            registry=self.registry,
        )
        self._example_counts = Histogram(
            ":tensorflow:serving:request_example_counts",
            "The number of tensorflow.Examples per request.",
            ["model"],
            buckets=EXAMPLE_COUNT_BUCKETS,
            registry=self.registry,
        )
        self._example_count_total = Counter(
            ":tensorflow:serving:request_example_count_total",
            "The total number of tensorflow.Examples.",
            ["model"],
            registry=self.registry,
        )
        self._load_attempts = Counter(
            ":tensorflow:cc:saved_model:load_attempt_count",
            "The number of times a SavedModel was successfully loaded.",
            ["model_path", "status"],
            registry=self.registry,
        )
        self._load_latency = Counter(
            ":tensorflow:cc:saved_model:load_latency",
            "Latency in microseconds for SavedModels that were successfully loaded.",
            ["model_path"],
            registry=self.registry,
        )
        self._signature_count = Counter(
            ":keras_dropout:serving:signature_request_count",
            "Requests by model, signature and canonical status code.",
            ["model_name", "signature_name", "status"],
            registry=self.registry,
        )
        self._signature_latency = Histogram(
            ":keras_dropout:serving:signature_request_latency",
            "Distribution of wall time (in microseconds) of requests, by signature.",
            ["model_name", "signature_name"],
            buckets=LATENCY_BUCKETS_US,
            registry=self.registry,
        )

        self._batch_size = Histogram(
            ":keras_dropout:serving:batch_size",
            "Rows of each merged call under --enable_batching, padding included.",
            ["model_name", "signature_name"],
            buckets=EXAMPLE_COUNT_BUCKETS,
            registry=self.registry,
        )

    @contextlib.contextmanager
    def request(self, api: str, entrypoint: str):
        """Times one request and counts it with the status it ends with.

        Yields a `RequestRecord` for the handler to name the model and signature; an
        exception with a `code` attribute (a `ServingError`) records that code, any other
        exception records INTERNAL. The exception propagates.
        """
        record = RequestRecord()
        start = time.perf_counter()
        try:
            yield record
        except BaseException as error:
            record.code = getattr(error, "code", "INTERNAL")
            raise
        finally:
            micros = (time.perf_counter() - start) * 1e6
            self._request_count.labels(record.model_name, record.code).inc()
            self._request_latency.labels(record.model_name, api, entrypoint).observe(micros)
            if record.signature_name:
                self._signature_count.labels(
                    record.model_name, record.signature_name, record.code
                ).inc()
                self._signature_latency.labels(record.model_name, record.signature_name).observe(
                    micros
                )

    def record_examples(self, model_name: str, count: int) -> None:
        """Counts the tf.Examples of one Classify / Regress / MultiInference request."""
        self._example_counts.labels(model_name).observe(count)
        self._example_count_total.labels(model_name).inc(count)

    def record_batch(self, model_name: str, signature_name: str, rows: int) -> None:
        """Counts one merged call of `rows` rows (batching)."""
        self._batch_size.labels(model_name, signature_name).observe(rows)

    def record_load(self, model_path: str, succeeded: bool, seconds: float) -> None:
        """Counts one version load (and its latency when it succeeded)."""
        self._load_attempts.labels(model_path, "success" if succeeded else "fail").inc()
        if succeeded:
            self._load_latency.labels(model_path).inc(seconds * 1e6)

    def exposition(self) -> bytes:
        """The metrics in Prometheus' text format, laid out as TF Serving writes them.

        TF Serving prints counters under their own name (no `_total` suffix, which
        `prometheus_client` adds) and no `_created` samples.
        """
        lines = []
        for family in self.registry.collect():
            family_name = family.name
            if family.type == "counter" and family_name in _NAMES_ENDING_IN_TOTAL:
                family_name += "_total"
            lines.append(f"# TYPE {family_name} {family.type}")
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                name = family_name if family.type == "counter" else sample.name
                labels = ",".join(
                    f'{key}="{_escape(value)}"' for key, value in sample.labels.items()
                )
                value = _format_value(sample.value)
                lines.append(f"{name}{{{labels}}} {value}" if labels else f"{name} {value}")
        return ("\n".join(lines) + "\n").encode("utf-8")


# prometheus_client strips "_total" from counter names; these TF Serving names keep it.
_NAMES_ENDING_IN_TOTAL = {":tensorflow:serving:request_example_count"}


def _format_value(value: float) -> str:
    # TF Serving's counters and histogram counts are integers and print as such ("1", not "1.0").
    return str(int(value)) if float(value).is_integer() else floatToGoString(value)


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def prometheus_path(monitoring_config) -> str | None:
    """The path to serve metrics at, from a MonitoringConfig message; None when disabled."""
    prometheus = monitoring_config.prometheus_config
    if not prometheus.enable:
        return None
    return prometheus.path or DEFAULT_PATH
