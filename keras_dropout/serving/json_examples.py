"""The JSON of TF Serving's REST `:classify` and `:regress` APIs, as `util/json_tensor.cc` has it.

A request body is `{"signature_name": ..., "context": {...}, "examples": [{...}, ...]}`; each
example (and the optional context) is an object mapping feature names to a value or a list of
values, read into a `tf.train.Example`:

- strings and `{"b64": "..."}` objects are a bytes_list;
- numbers written with a fraction or an exponent (and NaN, Infinity) are a float_list, refused
  when beyond float32's range ("without loss of precision");
- integers and booleans (true = 1) are an int64_list; integers beyond int64 are refused;
- one feature's values must all be of one kind; null, nested lists and other objects are
  refused.

With a context the examples go to `input.example_list_with_context`, else to
`input.example_list`. The request's `model_spec` carries only the signature name: the caller
fills the model from the URL.

Results are written as TF Serving writes them: `{"results": [[[label, score], ...], ...]}` for
classification (one list of classes per example), `{"results": [value, ...]}` for regression,
scores and values with float32's precision (see `tensors.dumps`).

Every error is a `ServingError` (INVALID_ARGUMENT) with TF Serving's message.
"""

from __future__ import annotations

import math

import numpy as np
from tensorflow.core.example import example_pb2, feature_pb2
from tensorflow_serving.apis import classification_pb2, regression_pb2

from keras_dropout.serving import tensors
from keras_dropout.serving.errors import ServingError

_KEYS = ("context", "examples")
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_INT64_MIN, _INT64_MAX, _UINT64_MAX = -(2**63), 2**63 - 1, 2**64 - 1
# The name TF Serving's messages give each kind of Feature.
_KIND_NAMES = {"bytes_list": "bytes", "float_list": "float", "int64_list": "int64"}


def _invalid(message: str) -> ServingError:
    return ServingError("INVALID_ARGUMENT", message)


def _unexpected_type(name: str, value) -> ServingError:
    return _invalid(
        f"Feature: {name} has element with unexpected JSON type: {tensors.json_type_name(value)}"
    )


def _feature_value(name: str, value) -> tuple[str, object]:
    """The Feature kind one JSON value belongs to, and the value as that kind holds it."""
    if value is None or isinstance(value, list):
        raise _unexpected_type(name, value)
    if isinstance(value, bool):
        return "int64_list", int(value)
    if isinstance(value, dict):
        if not tensors.is_b64_object(value):
            raise _unexpected_type(name, value)
        return "bytes_list", value
    if isinstance(value, str):
        return "bytes_list", tensors.json_string_bytes(value)
    # rapidjson holds an integer beyond 64 bits as a double: a float feature value, like 1.5.
    if isinstance(value, int) and _INT64_MIN <= value <= _UINT64_MAX:
        return "int64_list", value
    return "float_list", value


def _check_value(name: str, kind: str, value):
    """`value` as the Feature stores it; INVALID_ARGUMENT when it cannot be stored exactly."""
    if kind == "bytes_list":
        return value if isinstance(value, bytes) else tensors.decode_b64_object(value)
    if kind == "int64_list":
        if value > _INT64_MAX:
            raise _invalid(f"Feature: {name} has uint64 element. Only int64 is supported.")
        return value
    try:
        value = float(value)
    except OverflowError:  # An integer beyond a double.
        raise tensors.lossy_decimal_error(value, "float") from None
    if math.isfinite(value) and abs(value) > _FLOAT32_MAX:
        raise tensors.lossy_decimal_error(value, "float")
    return value


def _feature(name: str, content) -> feature_pb2.Feature:
    """One feature of an example: a JSON value or list of values, all of one kind."""
    feature = feature_pb2.Feature()
    kind = None
    values = []
    for value in content if isinstance(content, list) else [content]:
        value_kind, value = _feature_value(name, value)
        if kind is None:
            kind = value_kind
        elif value_kind != kind:
            raise _invalid(
                f"Unexpected element type in feature: {name} expecting type: {_KIND_NAMES[kind]}"
            )
        values.append(_check_value(name, kind, value))
    if kind is not None:
        getattr(feature, kind).value.extend(values)
    return feature


def _example(value, example: example_pb2.Example) -> None:
    """Fills `example` from a JSON object of features."""
    if not isinstance(value, dict):
        raise _invalid(
            f"Example must be JSON object but got JSON {tensors.json_type_name(value)}"
        )
    for name, content in value.items():
        example.features.feature[name].CopyFrom(_feature(name, content))


def _fill_request(body: bytes, request, method: str):
    signature_name, members = tensors.parse_json_request(body, _KEYS)
    if signature_name:
        request.model_spec.signature_name = signature_name
    has_context = "context" in members
    if has_context:
        _example(members["context"], request.input.example_list_with_context.context)
    examples = members.get("examples")
    if examples is None:
        raise _invalid(
            f"JSON Value: {tensors.json_value_text(members)} When method is {method}, key "
            "'examples' is expected and was not found"
        )
    if not isinstance(examples, list):
        raise _invalid(
            f"JSON Value: {tensors.json_value_text(members)} Expecting 'examples' value to be an "
            "list/array"
        )
    if not examples:
        raise _invalid(
            f"JSON Value: {tensors.json_value_text(members)} 'examples' value is an empty array"
        )
    if has_context:
        target = request.input.example_list_with_context.examples
    else:
        target = request.input.example_list.examples
    for value in examples:
        _example(value, target.add())
    return request


def classification_request_from_json(body: bytes) -> classification_pb2.ClassificationRequest:
    """A `:classify` body as the `ClassificationRequest` TF Serving builds from it.

    Args:
        body: the request body, `{"signature_name": ..., "context": {...}, "examples": [...]}`.

    Returns:
        The request with `model_spec.signature_name` (when given) and `input`; the model name
        and version are the caller's to fill.

    Raises:
        ServingError: INVALID_ARGUMENT with TF Serving's message.
    """
    return _fill_request(body, classification_pb2.ClassificationRequest(), "classify")


def regression_request_from_json(body: bytes) -> regression_pb2.RegressionRequest:
    """A `:regress` body as the `RegressionRequest` TF Serving builds from it.

    Args:
        body: the request body, `{"signature_name": ..., "context": {...}, "examples": [...]}`.

    Returns:
        The request with `model_spec.signature_name` (when given) and `input`; the model name
        and version are the caller's to fill.

    Raises:
        ServingError: INVALID_ARGUMENT with TF Serving's message.
    """
    return _fill_request(body, regression_pb2.RegressionRequest(), "regress")


def classification_result_to_json(result: classification_pb2.ClassificationResult) -> dict:
    """`{"results": [[[label, score], ...], ...]}`, one list of classes per example.

    Scores are `tensors.Float32Value`s, so `tensors.dumps` writes them as TF Serving does.

    Raises:
        ServingError: INVALID_ARGUMENT for a result without classifications.
    """
    if not result.classifications:
        raise _invalid("Cannot convert empty ClassificationResults to JSON")
    return {
        "results": [
            [[item.label, tensors.Float32Value(item.score)] for item in classifications.classes]
            for classifications in result.classifications
        ]
    }


def regression_result_to_json(result: regression_pb2.RegressionResult) -> dict:
    """`{"results": [value, ...]}`, one value per example, with float32's precision.

    Raises:
        ServingError: INVALID_ARGUMENT for a result without regressions.
    """
    if not result.regressions:
        raise _invalid("Cannot convert empty RegressionResults to JSON")
    return {"results": tensors.Float32List(item.value for item in result.regressions)}
