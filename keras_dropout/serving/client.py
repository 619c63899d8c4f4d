"""`Client`: one API over TF Serving's REST and gRPC protocols.

Works against `keras-dropout serve` and against a real
`tensorflow_model_server` alike: it speaks only the documented protocols.
"""

import base64
import json
import re

import numpy as np

from keras_dropout.serving.errors import ServingError
from keras_dropout.serving.tensors import proto_to_json


_HTTP_TO_CODE = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


# REST carries no status code, only the HTTP status, and 400 stands for several codes. An unknown
# signature is FAILED_PRECONDITION over gRPC; its REST message is recognised so that the same
# failure raises the same code on both transports. TF Serving's REST handler words it
# 'Serving signature name: "x" not found in signature def'; its gRPC one and ours
# 'Serving signature key "x" not found.'.
_UNKNOWN_SIGNATURE = re.compile(r'Serving signature (?:key|name):? "[^"]*" not found')


def _rest_error_code(http_status, message):
    if http_status == 400 and _UNKNOWN_SIGNATURE.search(message):
        return "FAILED_PRECONDITION"
    return _HTTP_TO_CODE.get(http_status, "INTERNAL")


def _to_json_value(value):
    array = np.asarray(value)
    if array.dtype.kind in "SO":
        # Bytes travel base64-encoded, as TF Serving expects.
        return _map_nested(array.tolist(), lambda b: {"b64": base64.b64encode(b).decode()})
    return array.tolist()


def _map_nested(value, function):
    if isinstance(value, list):
        return [_map_nested(item, function) for item in value]
    return function(value)


# -- casting inputs to the signature's dtypes (gRPC) --------------------------
#
# A TensorProto carries its dtype and TF Serving does not cast it, so over gRPC `Client.predict`
# casts each input to its signature's dtype first, as REST's JSON (which has no dtypes) is cast
# by the server: ints to an integer dtype within its range, floats to a floating dtype within
# its range (rounding is fine), whole floats to ints, bools to bool only. Anything else would
# change a value and is a ValueError before the request goes out.


def _castable(dtype):
    """The signature dtypes inputs are cast to; others (strings, complex, ...) travel as given."""
    return dtype.is_bool or ((dtype.is_floating or dtype.is_integer) and not dtype.is_quantized)


def _short(item):
    if isinstance(item, np.generic):
        item = item.item()
    text = repr(item)
    return text if len(text) <= 60 else text[:57] + "..."


def _first(array, mask):
    return array[tuple(np.argwhere(mask)[0])] if array.ndim else array[()]


def cast_to_signature_dtype(value, dtype, name="input", signature_name=None):
    """`value` as a NumPy array of the signature dtype `dtype`, if that changes no value.

    Args:
        value: array-like (NumPy array or scalar, Python number, bool or nested lists).
        dtype: the signature's dtype (`tf.DType`, a `DataType` enum value or a NumPy dtype).
        name: the input's name, for the error message.
        signature_name: the signature's name, for the error message.

    Returns:
        A NumPy array of `dtype`; `value` unchanged for dtypes that are not cast (strings,
        complex, quantized).

    Raises:
        ValueError: the cast would change a value: a float with a fractional part (or NaN, inf)
            for an integer dtype, a number out of the dtype's range, a string or a bool for a
            number, a number for a bool.
    """
    import tensorflow as tf

    dtype = tf.dtypes.as_dtype(dtype)
    if not _castable(dtype):
        return value
    where = f"input {name!r}" + (f" of signature {signature_name!r}" if signature_name else "")
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{where}: cannot be read as an array ({error})") from None
    target = np.dtype(dtype.as_numpy_dtype)
    if array.dtype == target:
        return array

    def refuse(item, reason):
        if array.ndim:
            received = f"an array ({array.dtype}, shape {array.shape}) holding {_short(item)}"
        else:
            type_name = array.dtype if isinstance(value, np.ndarray) else type(value).__name__
            received = f"{_short(item)} ({type_name})"
        raise ValueError(
            f"{where}: the signature's dtype is {dtype.name}, but received {received}, which "
            f"{reason}; the request was not sent"
        )

    kind = array.dtype.kind
    if kind == "V":  # bfloat16 and other ml_dtypes floats: exact in float64
        try:
            if tf.dtypes.as_dtype(array.dtype).is_floating:
                array, kind = array.astype(np.float64), "f"
        except TypeError:
            pass
    if array.size == 0:
        return array.astype(target)  # no value to change
    if kind == "O":
        return _cast_objects(array, dtype, target, refuse)
    if kind not in "biuf":
        reasons = {"U": "is a string, not a number", "S": "is bytes, not a number", "c": "is complex"}
        refuse(_first(array, np.ones(array.shape, bool)), reasons.get(kind, "is not a number"))
    if dtype.is_bool:
        if kind != "b":
            refuse(_first(array, np.ones(array.shape, bool)), "is not a boolean")
        return array.astype(bool)
    if kind == "b":
        refuse(_first(array, np.ones(array.shape, bool)), "is a boolean, not a number")
    if dtype.is_floating:
        return _to_floating(array, dtype, target, refuse)
    if kind == "f":
        whole = np.isfinite(array) & (array == np.trunc(array))
        if not whole.all():
            refuse(_first(array, ~whole), "is not a whole number")
    if array.size:
        for item in (array.min(), array.max()):
            # Python compares ints with floats exactly (2.0**63 > 2**63 - 1).
            if not dtype.min <= item.item() <= dtype.max:
                refuse(item, f"is out of range for {dtype.name} [{dtype.min}, {dtype.max}]")
    return array.astype(target)


def _cast_objects(array, dtype, target, refuse):
    """Arrays NumPy can only hold as objects: ints beyond 64 bits, strings, None, mixtures."""
    for item in array.flat:
        if isinstance(item, (str, bytes)):
            refuse(item, "is not a boolean" if dtype.is_bool else "is a string, not a number")
        if isinstance(item, (bool, np.bool_)):
            if not dtype.is_bool:
                refuse(item, "is a boolean, not a number")
        elif dtype.is_bool:
            refuse(item, "is not a boolean")
        elif not isinstance(item, (int, float, np.integer, np.floating)):
            refuse(item, "is not a number")
    if dtype.is_bool:
        return array.astype(bool)
    items = [item.item() if isinstance(item, np.generic) else item for item in array.flat]
    if dtype.is_integer:
        for item in items:
            if isinstance(item, float) and not (np.isfinite(item) and item == int(item)):
                refuse(item, "is not a whole number")
            if not dtype.min <= item <= dtype.max:
                refuse(item, f"is out of range for {dtype.name} [{dtype.min}, {dtype.max}]")
        return np.array([int(item) for item in items], dtype=target).reshape(array.shape)
    floats = []
    for item in items:
        try:
            floats.append(float(item))
        except OverflowError:
            refuse(item, f"is out of range for {dtype.name}")
    return _to_floating(np.array(floats, np.float64).reshape(array.shape), dtype, target, refuse)


def _to_floating(array, dtype, target, refuse):
    """Rounding is fine; a finite value that would become an infinity is not."""
    with np.errstate(over="ignore", invalid="ignore"):
        converted = array.astype(target)
    overflow = np.isinf(converted.astype(np.float64)) & np.isfinite(array.astype(np.float64))
    if overflow.any():
        refuse(_first(array, overflow), f"is out of range for {dtype.name}")
    return converted


def cast_to_signature(inputs, input_dtypes, signature_name=None):
    """`inputs` with each value cast by `cast_to_signature_dtype` to its dtype in `input_dtypes`.

    Inputs the signature does not have are left as they are, for the server to reject.
    """
    return {
        name: cast_to_signature_dtype(value, input_dtypes[name], name, signature_name)
        if name in input_dtypes
        else value
        for name, value in inputs.items()
    }


class Client:
    """A TF Serving client for REST, gRPC or both.

    Args:
        rest_url: e.g. "http://127.0.0.1:8501".
        grpc_target: e.g. "127.0.0.1:8500".
        model_name: the default model name for every call.
        transport: "grpc" or "rest"; default gRPC when `grpc_target` is set.
        timeout: seconds per request.

    Example:

    ```python
    client = kd.serving.Client(rest_url="http://127.0.0.1:8501", model_name="demo")
    answer = client.predict({"x": x}, signature_name="mc")   # {"mean": ..., "variance": ...}
    client.status()    # {"model_version_status": [...]}
    ```
    """

    def __init__(self, rest_url=None, grpc_target=None, model_name="model", transport=None, timeout=30.0):
        if rest_url is None and grpc_target is None:
            raise ValueError("Client needs `rest_url`, `grpc_target` or both.")
        if transport is None:
            transport = "grpc" if grpc_target is not None else "rest"
        if transport not in ("grpc", "rest"):
            raise ValueError(f"Invalid value received for argument `transport`. Expected 'grpc' or 'rest'. Received: transport={transport!r}")
        if transport == "grpc" and grpc_target is None or transport == "rest" and rest_url is None:
            raise ValueError(f"transport={transport!r} needs its address ({'grpc_target' if transport == 'grpc' else 'rest_url'}).")
        self.rest_url = rest_url.rstrip("/") if rest_url else None
        self.grpc_target = grpc_target
        self.model_name = model_name
        self.transport = transport
        self.timeout = timeout
        self._channel = None
        self._session = None
        self._output_names = {}
        self._input_dtypes = {}

    # -- public API ---------------------------------------------------------

    def predict(self, inputs, signature_name="mc", model_name=None, version=None, label=None):
        """Calls a signature; returns `{output name: np.ndarray}`.

        Args:
            inputs: `{input name: array-like}` (scalars allowed, e.g.
                `num_samples` and `seed` for `mc_sample`). Plain Python
                numbers and float64 arrays are fine on both transports: REST's
                JSON is cast by the server, and over gRPC the client casts each
                input to its signature's dtype (read once per model, version
                and signature with GetModelMetadata) when that changes no value.

        Raises:
            ServingError: the server's answer was an error.
            ValueError: over gRPC, an input that its signature's dtype cannot hold
                unchanged (0.5 or 2**40 for an int32 input, a string for a float
                input); nothing is sent.
            signature_name: "serving_default", "mc", "mc_sample", ...
            model_name: overrides the client's default model.
            version: a specific version (int), or None for the default.
            label: a version label (e.g. "stable"), instead of `version`.
        """
        model_name = model_name or self.model_name
        if not isinstance(inputs, dict):
            raise ValueError(f"Invalid value received for argument `inputs`. Expected a dict of input name -> array. Received: {type(inputs).__name__}")
        if self.transport == "grpc":
            return self._grpc_predict(inputs, signature_name, model_name, version, label)
        return self._rest_predict(inputs, signature_name, model_name, version, label)

    def metadata(self, model_name=None, version=None):
        """The model's signature definitions, as TF Serving's REST JSON (on both transports).

        `{"model_spec": {...}, "metadata": {"signature_def": {"signature_def": {NAME: ...}}}}`.
        """
        model_name = model_name or self.model_name
        if self.transport == "grpc":
            response, signature_map = self._grpc_metadata(model_name, version, None)
            return {
                "model_spec": proto_to_json(response.model_spec),
                "metadata": {"signature_def": proto_to_json(signature_map)},
            }
        return self._rest_get(self._model_path(model_name, version, None) + "/metadata")

    def status(self, model_name=None, version=None):
        """`{"model_version_status": [...]}` as TF Serving reports it."""
        model_name = model_name or self.model_name
        if self.transport == "grpc":
            from tensorflow_serving.apis import get_model_status_pb2

            request = get_model_status_pb2.GetModelStatusRequest()
            self._model_spec(request.model_spec, model_name, version, None)
            response = self._grpc_call("model", "GetModelStatus", request)
            return proto_to_json(response)
        return self._rest_get(self._model_path(model_name, version, None))

    def close(self):
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self._session is not None:
            self._session.close()
            self._session = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    # -- REST ---------------------------------------------------------------

    def _model_path(self, model_name, version, label):
        path = f"{self.rest_url}/v1/models/{model_name}"
        if version is not None:
            path += f"/versions/{int(version)}"
        elif label is not None:
            path += f"/labels/{label}"
        return path

    def _http(self):
        if self._session is None:
            import requests

            self._session = requests.Session()
        return self._session

    def _rest_answer(self, response):
        # TF Serving emits bare NaN / Infinity tokens; Python's json reads them.
        try:
            body = json.loads(response.text)
        except ValueError:
            body = {"error": response.text}
        if response.status_code != 200:
            message = body.get("error", response.text) if isinstance(body, dict) else response.text
            code = _rest_error_code(response.status_code, str(message))
            raise ServingError(code, message, http_status=response.status_code)
        return body

    def _rest_send(self, method, url, **kwargs):
        import requests

        # As over gRPC: an unreachable or silent server is a ServingError, not a transport's.
        try:
            return getattr(self._http(), method)(url, timeout=self.timeout, **kwargs)
        except requests.Timeout as error:
            raise ServingError("DEADLINE_EXCEEDED", f"{url}: {error}") from None
        except requests.ConnectionError as error:
            raise ServingError("UNAVAILABLE", f"{url}: {error}") from None

    def _rest_get(self, url):
        return self._rest_answer(self._rest_send("get", url))

    def _rest_predict(self, inputs, signature_name, model_name, version, label):
        body = {
            "signature_name": signature_name,
            "inputs": {name: _to_json_value(value) for name, value in inputs.items()},
        }
        payload = json.dumps(body, allow_nan=True)
        response = self._rest_send(
            "post",
            self._model_path(model_name, version, label) + ":predict",
            data=payload,
            headers={"Content-Type": "application/json"},
        )
        outputs = self._rest_answer(response)["outputs"]
        if isinstance(outputs, dict):
            return {name: np.asarray(value) for name, value in outputs.items()}
        # TF Serving sends a single output bare; its name is in the metadata.
        (name,) = self._signature_outputs(model_name, version, signature_name)
        return {name: np.asarray(outputs)}

    def _signature_outputs(self, model_name, version, signature_name):
        key = (model_name, version, signature_name)
        if key not in self._output_names:
            signatures = self._rest_get(self._model_path(model_name, version, None) + "/metadata")
            signature = signatures["metadata"]["signature_def"]["signature_def"][signature_name]
            self._output_names[key] = list(signature["outputs"])
        return self._output_names[key]

    # -- gRPC ---------------------------------------------------------------

    @staticmethod
    def _model_spec(spec, model_name, version, label):
        spec.name = model_name
        if version is not None:
            spec.version.value = int(version)
        elif label is not None:
            spec.version_label = label

    def _stub(self, service):
        import grpc
        from tensorflow_serving.apis import model_service_pb2_grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        if self._channel is None:
            self._channel = grpc.insecure_channel(
                self.grpc_target,
                options=[("grpc.max_receive_message_length", 256 * 1024 * 1024)],
            )
        if service == "prediction":
            return prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        return model_service_pb2_grpc.ModelServiceStub(self._channel)

    def _grpc_call(self, service, method, request):
        import grpc

        try:
            return getattr(self._stub(service), method)(request, timeout=self.timeout)
        except grpc.RpcError as error:
            raise ServingError(error.code().name, error.details()) from None

    def _grpc_metadata(self, model_name, version, label):
        """GetModelMetadata: the response and its unpacked SignatureDefMap."""
        from tensorflow_serving.apis import get_model_metadata_pb2

        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._model_spec(request.model_spec, model_name, version, label)
        response = self._grpc_call("prediction", "GetModelMetadata", request)
        # gRPC packs the SignatureDefMap in an Any; REST shows it unpacked.
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_map)
        return response, signature_map

    # Metadata failures that the Predict request would answer the same way, in its own words.
    _LEFT_TO_PREDICT = ("NOT_FOUND", "FAILED_PRECONDITION", "INVALID_ARGUMENT", "UNIMPLEMENTED")

    def _signature_input_dtypes(self, signature_name="mc", model_name=None, version=None, label=None):
        """`{input name: tf.DType}` of a signature, from GetModelMetadata (gRPC), cached.

        Cached per (model, version or label, signature); a cached entry is dropped when a
        Predict answers INVALID_ARGUMENT (e.g. a new default version changed a dtype). None
        when the model or the signature cannot be found: Predict then reports it.
        """
        import tensorflow as tf

        model_name = model_name or self.model_name
        key = (model_name, version, label, signature_name or "serving_default")
        if key not in self._input_dtypes:
            try:
                _, signature_map = self._grpc_metadata(model_name, version, label)
            except ServingError as error:
                if error.code in self._LEFT_TO_PREDICT:
                    return None
                raise
            if key[3] not in signature_map.signature_def:
                return None
            signature = signature_map.signature_def[key[3]]
            self._input_dtypes[key] = {
                name: tf.dtypes.as_dtype(info.dtype) for name, info in signature.inputs.items()
            }
        return self._input_dtypes[key]

    def _grpc_predict(self, inputs, signature_name, model_name, version, label):
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        input_dtypes = self._signature_input_dtypes(signature_name, model_name, version, label)
        if input_dtypes is not None:
            inputs = cast_to_signature(inputs, input_dtypes, signature_name)
        request = predict_pb2.PredictRequest()
        self._model_spec(request.model_spec, model_name, version, label)
        request.model_spec.signature_name = signature_name
        for name, value in inputs.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
        try:
            response = self._grpc_call("prediction", "Predict", request)
        except ServingError as error:
            if error.code == "INVALID_ARGUMENT":
                key = (model_name, version, label, signature_name or "serving_default")
                self._input_dtypes.pop(key, None)
            raise
        return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}
