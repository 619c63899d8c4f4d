"""TF Serving's Classify, Regress and MultiInference APIs over one loaded `Servable`.

These APIs take `tf.train.Example`s instead of tensors (`tensorflow_serving.apis.input_pb2.Input`)
and run a signature whose one input, "inputs", is a string vector of serialized Examples:

- `classify(servable, request)`: a classification signature, outputs "classes" (string
  [batch, n]) and/or "scores" (float [batch, n]), answered as n `Class`es per example.
- `regress(servable, request)`: a regression signature, output "outputs" (float [batch] or
  [batch, 1]), answered as one value per example.
- `multi_inference(servable, request)`: several classification and regression signatures of
  the same model on the same examples, one result per task in request order.

Everything follows TF Serving's `servables/tensorflow/classifier.cc`, `regressor.cc`,
`multi_inference.cc` and `util.cc`, with their status codes and messages: a signature is looked
up by `model_spec.signature_name` ("" means serving_default), checked (one input, the expected
outputs), run, and its outputs are checked (rank, dtype, one row per example) before they are
converted. Every failure is a `ServingError`, mostly INVALID_ARGUMENT.

- `example_list_with_context`: the context's serialized bytes come before each example's, so
  parsing merges them as protobuf merges any message: the context's features are in every
  example and an example's own feature of the same name wins. TF Serving builds the same bytes.
- `check_method_name`: TF Serving's `--enable_signature_method_name_check`, off by default, so
  that signatures saved by `tf.saved_model.save` (whose method_name is always
  tensorflow/serving/predict) can be classified and regressed. When on, a signature's
  method_name must be tensorflow/serving/classify or tensorflow/serving/regress.
- MultiInference runs each task's signature as a call of its own, as TF Serving's TFRT runtime
  does, so it has no "Input tensor must be the same for all Signatures." rule: that rule of the
  session runtime (one Session::Run feeding all signatures) would refuse every multi-signature
  request to a `tf.saved_model.save` model, whose signatures each get their own input
  placeholder. Where TF Serving's session runtime makes that one run, a stochastic or stateful
  graph here draws (or advances) once per task instead of once per request.
- The servable is given: finding it (`model_spec` name, version or label) is the caller's
  business, as in TF Serving's services. Responses name `model_spec.name` as the request does,
  the servable's version, and the signature (serving_default when the request left it empty).
- Signatures run through `Servable.run`, so whatever wraps it (batching, metrics) applies here.

Example:
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "iris"
    request.model_spec.signature_name = "classify"
    example = request.input.example_list.examples.add()
    example.features.feature["x"].float_list.value.append(2.0)
    response = classify(manager.servable("iris"), request)
    response.result.classifications[0].classes[0].score
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import classification_pb2
from tensorflow_serving.apis import inference_pb2
from tensorflow_serving.apis import regression_pb2

from keras_dropout.serving.errors import ServingError
from keras_dropout.serving.servables import DEFAULT_SIGNATURE

CLASSIFY_METHOD_NAME = tf.saved_model.CLASSIFY_METHOD_NAME
REGRESS_METHOD_NAME = tf.saved_model.REGRESS_METHOD_NAME
_INPUTS = tf.saved_model.CLASSIFY_INPUTS  # "inputs", the same key for regression.
_CLASSES = tf.saved_model.CLASSIFY_OUTPUT_CLASSES
_SCORES = tf.saved_model.CLASSIFY_OUTPUT_SCORES
_OUTPUTS = tf.saved_model.REGRESS_OUTPUTS


def _invalid(message: str) -> ServingError:
    return ServingError("INVALID_ARGUMENT", message)


# ----------------------------------------------------------------------------- input


def example_count(input_proto) -> int:
    """How many tf.Examples an `Input` holds (0 when it holds none)."""
    kind = input_proto.WhichOneof("kind")
    return len(getattr(input_proto, kind).examples) if kind else 0


def serialized_examples(input_proto) -> np.ndarray:
    """The request's examples as the string vector a signature is fed, as TF Serving builds it.

    Args:
        input_proto: an `input_pb2.Input` (`example_list` or `example_list_with_context`).

    Returns:
        A 1-D object array of serialized `tf.train.Example` bytes, one per example; with a
        context, each is the context's bytes followed by the example's (see the module doc).

    Raises:
        ServingError: INVALID_ARGUMENT "Input is empty." when there is no example (no kind
            set, or a list without examples, context or not).
    """
    kind = input_proto.WhichOneof("kind")
    if kind == "example_list":
        examples = [example.SerializeToString() for example in input_proto.example_list.examples]
    elif kind == "example_list_with_context":
        with_context = input_proto.example_list_with_context
        context = with_context.context.SerializeToString()
        examples = [context + example.SerializeToString() for example in with_context.examples]
    else:
        examples = []
    if not examples:
        raise _invalid("Input is empty.")
    return np.array(examples, dtype=object)


# ----------------------------------------------------------------------------- signatures


def _find_signature(servable, signature_name: str, not_found: str):
    name = signature_name or DEFAULT_SIGNATURE
    signature = servable.signature_def(name)
    if signature is None:
        raise _invalid(f"{not_found}{name}")
    return name, signature


PREDICT_METHOD_NAMES = (
    tf.saved_model.PREDICT_METHOD_NAME,
    CLASSIFY_METHOD_NAME,
    REGRESS_METHOD_NAME,
)


def check_predict_method_name(servable, signature_name: str) -> None:
    """Predict's side of `--enable_signature_method_name_check` (TF Serving's predict_util.cc).

    Predict runs predict, classify and regress signatures alike; any other method_name is
    refused (INTERNAL, as TF Serving answers it).
    """
    signature = servable.signature_def(signature_name)
    if signature is not None and signature.method_name not in PREDICT_METHOD_NAMES:
        raise ServingError(
            "INTERNAL",
            "Expected prediction signature method_name to be one of {"
            + ", ".join(PREDICT_METHOD_NAMES)
            + f"}}. Was: {signature.method_name}",
        )


def _check_method(signature, expected: str, kind: str, check_method_name: bool) -> None:
    if check_method_name and signature.method_name != expected:
        raise _invalid(
            f"Expected {kind} signature method_name to be {expected}. "
            f"Was: {signature.method_name}"
        )


def _classification_outputs(signature, check_method_name: bool) -> list[str]:
    """Checks a classification SignatureDef; returns the output aliases to fetch."""
    _check_method(signature, CLASSIFY_METHOD_NAME, "classification", check_method_name)
    if len(signature.inputs) != 1:
        raise _invalid("Expected one input Tensor.")
    if len(signature.outputs) not in (1, 2):
        raise _invalid(f"Expected one or two output Tensors, found {len(signature.outputs)}")
    if _INPUTS not in signature.inputs:
        raise _invalid(f"No classification inputs found in SignatureDef: {signature}")
    outputs = [alias for alias in (_CLASSES, _SCORES) if alias in signature.outputs]
    if not outputs:
        raise _invalid(
            "Expected classification signature outputs to contain at least one of "
            f'"{_CLASSES}" or "{_SCORES}". Signature was: {signature}'
        )
    return outputs


def _regression_outputs(signature, check_method_name: bool) -> list[str]:
    """Checks a regression SignatureDef; returns the output alias to fetch."""
    _check_method(signature, REGRESS_METHOD_NAME, "regression", check_method_name)
    if len(signature.inputs) != 1:
        raise _invalid("Expected one input Tensor.")
    if len(signature.outputs) != 1:
        raise _invalid("Expected one output Tensor.")
    if _INPUTS not in signature.inputs:
        raise _invalid(f"No regression inputs found in SignatureDef: {signature}")
    if _OUTPUTS not in signature.outputs:
        raise _invalid(f"No regression outputs found in SignatureDef: {signature}")
    return [_OUTPUTS]


def _run(servable, signature_name: str, examples: np.ndarray, outputs: list[str]) -> dict:
    results = servable.run(signature_name, {_INPUTS: examples}, outputs)
    return {alias: np.asarray(value) for alias, value in results.items()}


def _fill_model_spec(model_spec, model_name: str, signature_name: str, version: int) -> None:
    # TF Serving's MakeModelSpec: the request's name, the resolved signature, the served version.
    model_spec.name = model_name
    model_spec.signature_name = signature_name
    model_spec.version.value = version


# ----------------------------------------------------------------------------- outputs


def _dtype_name(array: np.ndarray) -> str:
    dtype = tf.string if array.dtype.kind in "OSU" else tf.as_dtype(array.dtype)
    return types_pb2.DataType.Name(dtype.as_datatype_enum)


def _shape_text(array: np.ndarray) -> str:
    return "[" + ",".join(str(dim) for dim in array.shape) + "]"


def _check_classification_output(array, what: str, dtype: str, num_examples: int) -> None:
    if array.ndim != 2:
        raise _invalid(
            f"Expected Tensor shape: [batch_size num_classes] but got {_shape_text(array)}"
        )
    if _dtype_name(array) != dtype:
        raise _invalid(f"Expected {what} Tensor of {dtype}. Got: {_dtype_name(array)}")
    if array.shape[0] != num_examples:
        raise _invalid(
            f"Expected {what} output batch size of {num_examples}. Got: {array.shape[0]}"
        )


def _classification_result(outputs: dict, num_examples: int, result) -> None:
    """Checks "classes"/"scores" and writes them into a `ClassificationResult`."""
    classes, scores = outputs.get(_CLASSES), outputs.get(_SCORES)
    if classes is not None:
        _check_classification_output(classes, "classes", "DT_STRING", num_examples)
    if scores is not None:
        _check_classification_output(scores, "scores", "DT_FLOAT", num_examples)
    if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
        raise _invalid(
            "Tensors class and score should match in dim_size(1). "
            f"Got {classes.shape[1]} vs. {scores.shape[1]}"
        )
    num_classes = (classes if classes is not None else scores).shape[1]
    for i in range(num_examples):
        classifications = result.classifications.add()
        for c in range(num_classes):
            entry = classifications.classes.add()
            if classes is not None:
                # A proto string must be UTF-8; TF Serving's C++ copies the bytes unchecked.
                entry.label = classes[i, c].decode("utf-8", "replace")
            if scores is not None:
                entry.score = float(scores[i, c])


def _regression_result(outputs: dict, num_examples: int, result) -> None:
    """Checks "outputs" and writes it into a `RegressionResult`."""
    values = outputs[_OUTPUTS]
    if not (values.ndim == 1 or (values.ndim == 2 and values.shape[1] == 1)):
        raise _invalid(
            "Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got "
            f"{_shape_text(values)}"
        )
    if values.shape[0] != num_examples:
        raise _invalid(
            "Input batch size did not match output batch size: "
            f"{num_examples} vs. {values.shape[0]}"
        )
    if _dtype_name(values) != "DT_FLOAT":
        raise _invalid(f"Expected output Tensor of DT_FLOAT.  Got: {_dtype_name(values)}")
    for value in values.reshape(-1):
        result.regressions.add().value = float(value)


# ----------------------------------------------------------------------------- the APIs


def classify(servable, request, *, check_method_name: bool = False):
    """Runs a classification signature on the request's examples (TF Serving's Classify).

    Args:
        servable: the `servables.Servable` the request is for.
        request: a `classification_pb2.ClassificationRequest`.
        check_method_name: require method_name tensorflow/serving/classify (TF Serving's
            `--enable_signature_method_name_check`).

    Returns:
        A `classification_pb2.ClassificationResponse`: one `Classifications` per example, each
        with a `Class` per column of "classes"/"scores" (label and/or score), and `model_spec`.

    Raises:
        ServingError: INVALID_ARGUMENT for an unknown signature, a signature that is not a
            classification one, no examples, or outputs of the wrong rank, dtype or batch size;
            the signature's own error when running it fails.
    """
    name, signature = _find_signature(
        servable, request.model_spec.signature_name, "No signature was found with the name: "
    )
    outputs = _classification_outputs(signature, check_method_name)
    examples = serialized_examples(request.input)
    arrays = _run(servable, name, examples, outputs)
    response = classification_pb2.ClassificationResponse()
    _fill_model_spec(response.model_spec, request.model_spec.name, name, servable.version)
    _classification_result(arrays, len(examples), response.result)
    return response


def regress(servable, request, *, check_method_name: bool = False):
    """Runs a regression signature on the request's examples (TF Serving's Regress).

    Args:
        servable: the `servables.Servable` the request is for.
        request: a `regression_pb2.RegressionRequest`.
        check_method_name: require method_name tensorflow/serving/regress (TF Serving's
            `--enable_signature_method_name_check`).

    Returns:
        A `regression_pb2.RegressionResponse`: one `Regression` value per example, and
        `model_spec`.

    Raises:
        ServingError: INVALID_ARGUMENT for an unknown signature, a signature that is not a
            regression one, no examples, or an output that is not float [batch] or
            [batch, 1]; the signature's own error when running it fails.
    """
    name, signature = _find_signature(
        servable, request.model_spec.signature_name, "No signature was found with the name: "
    )
    outputs = _regression_outputs(signature, check_method_name)
    examples = serialized_examples(request.input)
    arrays = _run(servable, name, examples, outputs)
    response = regression_pb2.RegressionResponse()
    _fill_model_spec(response.model_spec, request.model_spec.name, name, servable.version)
    _regression_result(arrays, len(examples), response.result)
    return response


def multi_inference(servable, request, *, check_method_name: bool = False):
    """Runs several classification/regression signatures on the same examples.

    TF Serving's MultiInference. Every task is checked before anything runs: each names the
    same model (and a non-empty name), no signature twice ("" and serving_default are the
    same), an existing signature, and method_name tensorflow/serving/classify or
    tensorflow/serving/regress (the task's, not the signature's; a signature must still be a
    valid one of that kind). Then every signature runs, then every result is checked.

    Args:
        servable: the `servables.Servable` of the model the tasks name.
        request: an `inference_pb2.MultiInferenceRequest`.
        check_method_name: also require each signature's own method_name to match its task's
            (TF Serving's `--enable_signature_method_name_check`).

    Returns:
        An `inference_pb2.MultiInferenceResponse` with one `InferenceResult` per task, in
        request order, each with its `model_spec` and classification or regression result.

    Raises:
        ServingError: INVALID_ARGUMENT for the task rules above, no examples, or a bad output;
            UNIMPLEMENTED for a task method_name that is neither classify nor regress.
    """
    model_name = ""
    plan, seen = [], set()
    for task in request.tasks:
        if not task.model_spec.name:
            raise _invalid("Found ModelSpec with an empty model name.")
        if not model_name:
            model_name = task.model_spec.name
        elif task.model_spec.name != model_name:
            raise _invalid(
                "All ModelSpecs in a MultiInferenceRequest must access the same model name."
            )
        name = task.model_spec.signature_name or DEFAULT_SIGNATURE
        if name in seen:
            raise _invalid(f"Duplicate evaluation of signature: {name}")
        seen.add(name)
        _, signature = _find_signature(
            servable, name, "Requested signature not found in model graph: "
        )
        if task.method_name == CLASSIFY_METHOD_NAME:
            outputs = _classification_outputs(signature, check_method_name)
        elif task.method_name == REGRESS_METHOD_NAME:
            outputs = _regression_outputs(signature, check_method_name)
        else:
            raise ServingError(
                "UNIMPLEMENTED", f"Unsupported signature method_name: {task.method_name}"
            )
        plan.append((name, task.method_name, outputs))
    examples = serialized_examples(request.input)
    # Everything runs before any result is checked, as TF Serving's single Session::Run does.
    runs = [_run(servable, name, examples, outputs) for name, _, outputs in plan]
    response = inference_pb2.MultiInferenceResponse()
    for (name, method_name, _), arrays in zip(plan, runs):
        result = response.results.add()
        _fill_model_spec(result.model_spec, model_name, name, servable.version)
        if method_name == CLASSIFY_METHOD_NAME:
            _classification_result(arrays, len(examples), result.classification_result)
        else:
            _regression_result(arrays, len(examples), result.regression_result)
    return response
