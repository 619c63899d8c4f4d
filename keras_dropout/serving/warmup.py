"""TF Serving warmup files: one PredictionLog per signature.

TF Serving replays `assets.extra/tf_serving_warmup_requests` (a TFRecord of
`PredictionLog` protos, at most 1000) when it loads a version, so the first
real request does not pay for graph initialisation; a failing record fails
the load. `replay_warmup` is that replay, for the server and `check` alike.
"""

import os

import numpy as np
import tensorflow as tf

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
MAX_WARMUP_RECORDS = 1000  # TF Serving's limit; more fails the load.


def _serving_apis():
    try:
        from tensorflow_serving.apis import predict_pb2
        from tensorflow_serving.apis import prediction_log_pb2
    except ImportError as error:
        raise ImportError(
            "Writing or checking warmup requests needs tensorflow-serving-api: "
            "pip install 'keras-dropout[serving]' (or pass warmup=False)."
        ) from error
    return predict_pb2, prediction_log_pb2


def example_inputs(specs):
    """One row of zeros (empty strings for string inputs) per input spec.

    Unknown inner dimensions become 1.
    """
    arrays = {}
    for name, spec in specs.items():
        shape = [1] + [dim if dim is not None else 1 for dim in spec.shape[1:]]
        if spec.dtype == tf.string:
            # np.zeros(..., object) holds int 0, which is no string proto value.
            arrays[name] = np.full(shape, b"", dtype=object)
        else:
            arrays[name] = np.zeros(shape, spec.dtype.as_numpy_dtype)
    return arrays


def warmup_requests(specs, batching=False, moments=False):
    """`(signature_name, {input: array})` pairs, one per exported signature."""
    inputs = example_inputs(specs)
    requests = [("serving_default", inputs), ("mc", inputs)]
    if moments:
        requests.append(("moments", inputs))
    if not batching:
        sampled = dict(inputs, num_samples=np.int32(2), seed=np.int64(0))
        requests.append(("mc_sample", sampled))
    return requests


def write_warmup_requests(saved_model_path, specs, batching=False, model_name="model", moments=False):
    """Writes the warmup TFRecord into `saved_model_path/assets.extra/`."""
    predict_pb2, prediction_log_pb2 = _serving_apis()
    path = os.path.join(saved_model_path, WARMUP_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for signature_name, inputs in warmup_requests(specs, batching, moments):
            request = predict_pb2.PredictRequest()
            request.model_spec.name = model_name
            request.model_spec.signature_name = signature_name
            for name, value in inputs.items():
                request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request)
            )
            writer.write(log.SerializeToString())
    return path


def read_warmup_requests(saved_model_path):
    """Parses the warmup file into a list of `PredictionLog` protos."""
    _, prediction_log_pb2 = _serving_apis()
    path = os.path.join(saved_model_path, WARMUP_FILE)
    logs = []
    for record in tf.data.TFRecordDataset(path):
        log = prediction_log_pb2.PredictionLog()
        log.ParseFromString(record.numpy())
        logs.append(log)
    return logs


def replay_warmup(servable, iterations: int = 1) -> int:
    """Replays a loaded version's warmup file against it, as TF Serving does at load time.

    The one replay both the server (`servables.load_servable`) and `check` use. Predict,
    Classify, Regress and MultiInference logs are replayed, each `iterations` times (TF
    Serving's `--num_request_iterations_for_warmup`); the first failure stops the replay.

    Args:
        servable: a `servables.Servable` (its `path` holds the warmup file).
        iterations: times each record is replayed (at least 1).

    Returns:
        The number of records replayed (0 when the version has no warmup file).

    Raises:
        ServingError: more than 1000 records, an unreadable file, a record of a kind that
            cannot be replayed, or a failing request (its own code, the record named).
    """
    from keras_dropout.serving import inference
    from keras_dropout.serving import tensors
    from keras_dropout.serving.errors import ServingError
    from keras_dropout.serving.errors import from_tf_error

    path = os.path.join(servable.path, WARMUP_FILE)
    if not tf.io.gfile.exists(path):
        return 0
    try:
        logs = read_warmup_requests(servable.path)
    except Exception as error:  # tf's DataLossError for a bad TFRecord; DecodeError for a bad log.
        code = from_tf_error(error).code if isinstance(error, tf.errors.OpError) else "DATA_LOSS"
        raise ServingError(
            code, f"Warmup file {path} does not parse as PredictionLog TFRecords: {error}"
        ) from None
    if len(logs) > MAX_WARMUP_RECORDS:
        raise ServingError(
            "INVALID_ARGUMENT",
            f"Number of warmup records exceeds the maximum ({MAX_WARMUP_RECORDS}) at {path}: "
            f"{len(logs)} records",
        )

    def predict(request):
        inputs = {
            key: tensors.tensor_proto_to_array(proto, key) for key, proto in request.inputs.items()
        }
        servable.run(request.model_spec.signature_name, inputs, list(request.output_filter))

    replays = {
        "predict_log": predict,
        "classify_log": lambda request: inference.classify(servable, request),
        "regress_log": lambda request: inference.regress(servable, request),
        "multi_inference_log": lambda request: inference.multi_inference(servable, request),
    }
    for number, log in enumerate(logs, start=1):
        kind = log.WhichOneof("log_type")
        if kind not in replays:
            raise ServingError(
                "UNIMPLEMENTED", f"Unsupported log_type for warmup: {kind} (record {number} of {path})"
            )
        request = getattr(log, kind).request
        try:
            for _ in range(max(1, iterations)):
                replays[kind](request)
        except ServingError as error:
            signature = getattr(request, "model_spec", None)
            about = f", signature '{signature.signature_name or 'serving_default'}'" if signature else ""
            raise ServingError(
                error.code,
                f"Warmup record {number} of {path} ({kind}{about}) failed: {error.message}",
            ) from None
    return len(logs)
