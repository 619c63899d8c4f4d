"""TF Serving's `BatchingParameters` and `MonitoringConfig` protos, and their text-file parsers.

The tensorflow-serving-api wheel ships neither `session_bundle_config.proto` (which defines
`BatchingParameters`, the format of `--batching_parameters_file`) nor `monitoring_config.proto`
(`MonitoringConfig` / `PrometheusConfig`, the format of `--monitoring_config_file`). This module
declares the same messages at import time: package `tensorflow.serving`, the same field names,
numbers and types, so every file `tensorflow_model_server` accepts parses here to the same
message, and the wire format is TF Serving's.

Only these three messages are declared; the rest of `session_bundle_config.proto`
(SessionBundleConfig, ModelWarmupOptions, ...) is not needed to read either file. They live in a
private descriptor pool, so a later wheel that does ship these files cannot clash with them.

```python
parameters = parse_batching_parameters("max_batch_size { value: 16 }", "batching.txt")
parameters.max_batch_size.value  # 16
```
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2
from google.protobuf import descriptor_pool
from google.protobuf import message_factory
from google.protobuf import text_format
from google.protobuf import wrappers_pb2

_Field = descriptor_pb2.FieldDescriptorProto

# (name, number, type, label, message type) as in TF Serving's .proto files. BatchingParameters
# lists its fields in the file's order, which is not the numbers' order.
_BATCHING_PARAMETERS_FIELDS = (
    ("max_batch_size", 1, _Field.TYPE_MESSAGE, _Field.LABEL_OPTIONAL, "Int64Value"),
    ("batch_timeout_micros", 2, _Field.TYPE_MESSAGE, _Field.LABEL_OPTIONAL, "Int64Value"),
    ("max_enqueued_batches", 3, _Field.TYPE_MESSAGE, _Field.LABEL_OPTIONAL, "Int64Value"),
    ("num_batch_threads", 4, _Field.TYPE_MESSAGE, _Field.LABEL_OPTIONAL, "Int64Value"),
    ("thread_pool_name", 5, _Field.TYPE_MESSAGE, _Field.LABEL_OPTIONAL, "StringValue"),
    ("enable_large_batch_splitting", 8, _Field.TYPE_MESSAGE, _Field.LABEL_OPTIONAL, "BoolValue"),
    ("max_execution_batch_size", 9, _Field.TYPE_MESSAGE, _Field.LABEL_OPTIONAL, "Int64Value"),
    ("allowed_batch_sizes", 6, _Field.TYPE_INT64, _Field.LABEL_REPEATED, None),
    ("pad_variable_length_inputs", 7, _Field.TYPE_BOOL, _Field.LABEL_OPTIONAL, None),
)
_PROMETHEUS_CONFIG_FIELDS = (
    ("enable", 1, _Field.TYPE_BOOL, _Field.LABEL_OPTIONAL, None),
    ("path", 2, _Field.TYPE_STRING, _Field.LABEL_OPTIONAL, None),
)
_MONITORING_CONFIG_FIELDS = (
    (
        "prometheus_config",
        1,
        _Field.TYPE_MESSAGE,
        _Field.LABEL_OPTIONAL,
        ".tensorflow.serving.PrometheusConfig",
    ),
)


def _add_message(file_proto, name, fields):
    message = file_proto.message_type.add(name=name)
    for field_name, number, field_type, label, type_name in fields:
        field = message.field.add(name=field_name, number=number, type=field_type, label=label)
        if type_name is not None:
            # Bare names are google.protobuf wrappers; dotted ones are already fully qualified.
            if not type_name.startswith("."):
                type_name = f".google.protobuf.{type_name}"
            field.type_name = type_name


def _build_pool() -> descriptor_pool.DescriptorPool:
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)

    session_bundle_config = descriptor_pb2.FileDescriptorProto(
        name="tensorflow_serving/servables/tensorflow/session_bundle_config.proto",
        package="tensorflow.serving",
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )
    _add_message(session_bundle_config, "BatchingParameters", _BATCHING_PARAMETERS_FIELDS)
    pool.AddSerializedFile(session_bundle_config.SerializeToString())

    monitoring_config = descriptor_pb2.FileDescriptorProto(
        name="tensorflow_serving/config/monitoring_config.proto",
        package="tensorflow.serving",
        syntax="proto3",
    )
    _add_message(monitoring_config, "PrometheusConfig", _PROMETHEUS_CONFIG_FIELDS)
    _add_message(monitoring_config, "MonitoringConfig", _MONITORING_CONFIG_FIELDS)
    pool.AddSerializedFile(monitoring_config.SerializeToString())
    return pool


_POOL = _build_pool()

BatchingParameters = message_factory.GetMessageClass(
    _POOL.FindMessageTypeByName("tensorflow.serving.BatchingParameters")
)
PrometheusConfig = message_factory.GetMessageClass(
    _POOL.FindMessageTypeByName("tensorflow.serving.PrometheusConfig")
)
MonitoringConfig = message_factory.GetMessageClass(
    _POOL.FindMessageTypeByName("tensorflow.serving.MonitoringConfig")
)


def _parse(text: str, source: str, message_class):
    message = message_class()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as error:
        # TF Serving's main/server.cc (ParseProtoTextFile) says "Invalid protobuf file: '<file>'"
        # and stops; the parser's line and column are added here so the file can be fixed.
        raise ValueError(
            f"Invalid protobuf file: '{source}': not a valid "
            f"{message_class.DESCRIPTOR.full_name} text proto: {error}"
        ) from None
    return message


def parse_batching_parameters(text: str, source: str = "<batching parameters>"):
    """Parses the text of a `--batching_parameters_file` into a `BatchingParameters` message.

    Args:
        text: the file's contents, a `tensorflow.serving.BatchingParameters` text proto, e.g.
            `max_batch_size { value: 16 }  pad_variable_length_inputs: true`.
        source: the file's name, used in the error message.

    Returns:
        The `BatchingParameters` message. Unset wrapper fields stay unset (`HasField` is false):
        `batching.BatchingOptions.from_proto` fills in TF Serving's defaults.

    Raises:
        ValueError: the text is not a valid BatchingParameters text proto (unknown field, wrong
            type, syntax error); the message names `source` and the parser's error.
    """
    return _parse(text, source, BatchingParameters)


def parse_monitoring_config(text: str, source: str = "<monitoring config>"):
    """Parses the text of a `--monitoring_config_file` into a `MonitoringConfig` message.

    Args:
        text: the file's contents, a `tensorflow.serving.MonitoringConfig` text proto, e.g.
            `prometheus_config { enable: true, path: "/monitoring/prometheus/metrics" }`.
        source: the file's name, used in the error message.

    Returns:
        The `MonitoringConfig` message (`prometheus_config.path` is "" when the file does not
        set it: TF Serving then serves `/monitoring/prometheus/metrics`).

    Raises:
        ValueError: the text is not a valid MonitoringConfig text proto; the message names
            `source` and the parser's error.
    """
    return _parse(text, source, MonitoringConfig)
