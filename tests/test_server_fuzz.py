"""Hostile input: the server fuzzed with hypothesis over REST and gRPC.

Specification: DESIGN.md section 6 (TF Serving's error format and status mapping) and issue 6
item 1. Whatever a client sends, the server answers in TF Serving's format: REST with a 4xx and
`{"error": "..."}` (never a 500, never a crash), gRPC with INVALID_ARGUMENT, FAILED_PRECONDITION
or NOT_FOUND (never UNKNOWN or INTERNAL). A model name never reaches the file system: names such
as `../secret` are NOT_FOUND although `../secret` is a loadable SavedModel next to the served
ones (so TensorFlow never read it), and a Python audit hook sees no file under it opened or
listed. JSON's `NaN` / `Infinity` tokens are valid float input, as in TF Serving. After the
fuzzing the server still answers correct requests correctly.

One server for the module, serving a real `kd.serving.export` (`clf`: a small MC-dropout
classifier, input `x` float32 [None, 3], max_samples 16) and `text` (the plain-TF ScaleModule of
`serving_fixtures`, for its string signature). Examples are derandomized so CI cannot flake.
"""

import base64
import http.client
import json
import os
import shutil
import socket
import sys
import urllib.parse

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
grpc = pytest.importorskip("grpc")
pytest.importorskip("uvicorn")
pytest.importorskip("tensorflow_serving")

import keras  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from tensorflow.core.framework import tensor_pb2, types_pb2  # noqa: E402
from tensorflow_serving.apis import get_model_metadata_pb2  # noqa: E402
from tensorflow_serving.apis import get_model_status_pb2  # noqa: E402
from tensorflow_serving.apis import model_service_pb2_grpc  # noqa: E402
from tensorflow_serving.apis import predict_pb2  # noqa: E402
from tensorflow_serving.apis import prediction_service_pb2_grpc  # noqa: E402

import keras_dropout as kd  # noqa: E402
import serving_fixtures as fixtures  # noqa: E402
from keras_dropout.serving import Server  # noqa: E402
from keras_dropout.serving.servables import ModelConfig  # noqa: E402

pytestmark = pytest.mark.tf_only

MAX_SAMPLES = 16
MAX_BODY_BYTES = 256 * 1024
MODELS = ("clf", "text")
SIGNATURES = ("", "serving_default", "mc", "mc_sample", "strings", "multi", "nope")
FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
GRPC_ERRORS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.NOT_FOUND,
}


# ----------------------------------------------------------------------------- fixtures

# Paths under the sentinel directory that anything in this process opened (audit events).
_SENTINEL_OPENS = []
_SENTINEL = {"dir": None}


def _audit(event, args, _sentinel=_SENTINEL, _opens=_SENTINEL_OPENS, _os=os):
    # Python's audit hooks cannot be removed: this one stays cheap and inert outside the module,
    # and holds what it needs itself (module globals are gone at interpreter exit).
    sentinel = _sentinel["dir"]
    if sentinel and event in ("open", "os.listdir", "os.scandir") and args:
        path = args[0]
        if isinstance(path, (str, bytes, _os.PathLike)):
            path = _os.fsdecode(path)
            if sentinel in _os.path.abspath(path):
                _opens.append((event, path))


sys.addaudithook(_audit)


@pytest.fixture(scope="module")
def classifier():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((3,), name="x")
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    hidden = kd.layers.MCDropout(0.2)(hidden)
    outputs = keras.layers.Dense(2, activation="softmax")(hidden)
    return keras.Model(inputs, outputs)


@pytest.fixture(scope="module")
def root(tmp_path_factory, classifier):
    root = tmp_path_factory.mktemp("fuzz")
    kd.serving.export(classifier, str(root / "models" / "clf"), num_samples=4, max_samples=MAX_SAMPLES)
    scale = fixtures.save_scale_model(str(root / "scale"), 2)
    fixtures.place_version(scale, str(root / "models" / "text"), 1)
    # A loadable model and a file just outside the base paths: reaching them would be a breach.
    fixtures.place_version(scale, str(root / "secret"), 1)
    (root / "secret" / "passwd").write_text("root:x:0:0")
    shutil.rmtree(scale)
    return root


@pytest.fixture(scope="module")
def server(root):
    server = Server(
        models=[ModelConfig(name, str(root / "models" / name)) for name in MODELS],
        port=0,
        rest_api_port=0,
        file_system_poll_wait_seconds=0,
        max_body_bytes=MAX_BODY_BYTES,
    )
    server.start()
    _SENTINEL["dir"] = str(root / "secret")
    yield server
    _SENTINEL["dir"] = None
    server.stop(grace=1)


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.grpc_target) as channel:
        yield channel


@pytest.fixture(scope="module")
def prediction_stub(channel):
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


@pytest.fixture(scope="module")
def model_stub(channel):
    return model_service_pb2_grpc.ModelServiceStub(channel)


# ----------------------------------------------------------------------------- helpers


def send(server, method, path, body=b""):
    """Sends `path` exactly as given (no client-side normalisation of `..` or encoding)."""
    connection = http.client.HTTPConnection(server.host, server.rest_api_port, timeout=30)
    try:
        connection.putrequest(method, path, skip_accept_encoding=True)
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def assert_tf_serving_error(status, payload, allowed=range(400, 500)):
    assert status in allowed, (status, payload[:300])
    document = json.loads(payload)
    assert set(document) == {"error"} and isinstance(document["error"], str), payload[:300]


def assert_answer_or_error(status, payload):
    if status == 200:
        json.loads(payload)  # Python's json reads NaN / Infinity
    else:
        assert_tf_serving_error(status, payload)


X = [[0.5, -1.0, 2.0], [0.0, 0.25, -0.5]]


def assert_still_serving(server, classifier):
    body = json.dumps({"instances": X}).encode()
    status, payload = send(server, "POST", "/v1/models/clf:predict", body)
    assert status == 200, payload
    expected = keras.ops.convert_to_numpy(classifier(np.array(X, np.float32)))
    np.testing.assert_allclose(json.loads(payload)["predictions"], expected, rtol=1e-5, atol=1e-6)


def test_the_audit_hook_sees_opens_under_the_sentinel(server, root):
    # Guards the checks below: they pass vacuously if the hook sees nothing.
    with open(root / "secret" / "passwd") as handle:
        handle.read()
    assert _SENTINEL_OPENS and _SENTINEL_OPENS[0][1].endswith("passwd")
    _SENTINEL_OPENS.clear()


# ----------------------------------------------------------------------------- REST bodies

json_leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8)
    | st.builds(lambda s: {"b64": s}, st.text(max_size=8))
)
json_values = st.recursive(
    json_leaves,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(
        st.sampled_from(["x", "s", "a", "b", "num_samples", "seed", "b64", "?"]), children, max_size=3
    ),
    max_leaves=24,
)
predict_documents = st.fixed_dictionaries(
    {},
    optional={
        "signature_name": st.sampled_from(SIGNATURES) | json_values,
        "instances": json_values,
        "inputs": json_values,
        "extra": json_values,
    },
)


@FUZZ
@given(model=st.sampled_from(MODELS), document=predict_documents)
def test_any_json_document_gets_an_answer_or_a_json_4xx(server, model, document):
    body = json.dumps(document, allow_nan=True).encode()
    status, payload = send(server, "POST", f"/v1/models/{model}:predict", body)
    assert_answer_or_error(status, payload)


@FUZZ
@given(body=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_arbitrary_bytes_get_a_json_4xx(server, body):
    status, payload = send(server, "POST", "/v1/models/clf:predict", body)
    assert_answer_or_error(status, payload)


float32_or_special = st.floats(width=32, allow_nan=True, allow_infinity=True)


@FUZZ
@given(
    rows=st.lists(st.lists(float32_or_special, min_size=3, max_size=3), min_size=1, max_size=4),
    signature=st.sampled_from(["serving_default", "mc"]),
)
def test_nan_and_infinity_tokens_are_valid_float_input(server, rows, signature):
    body = json.dumps({"signature_name": signature, "instances": rows}, allow_nan=True).encode()
    status, payload = send(server, "POST", "/v1/models/clf:predict", body)
    assert status == 200, payload
    assert len(json.loads(payload)["predictions"]) == len(rows)


@FUZZ
@given(
    rows=st.lists(st.lists(float32_or_special, min_size=3, max_size=3), min_size=1, max_size=4),
    num_samples=st.integers(-(2**31), 2**31 - 1) | st.integers(-2, MAX_SAMPLES + 2),
    seed=st.integers(-(2**63), 2**63 - 1),
)
def test_mc_sample_answers_within_the_cap_and_400_outside_it(server, rows, num_samples, seed):
    inputs = {"x": rows, "num_samples": num_samples, "seed": seed}
    body = json.dumps({"signature_name": "mc_sample", "inputs": inputs}, allow_nan=True).encode()
    status, payload = send(server, "POST", "/v1/models/clf:predict", body)
    if 0 <= num_samples <= MAX_SAMPLES:
        assert status == 200, payload
    else:
        assert_tf_serving_error(status, payload, allowed={400})
        assert "num_samples" in json.loads(payload)["error"]


@FUZZ
@given(
    items=st.lists(
        st.text(max_size=6) | st.builds(lambda s: {"b64": s}, st.text(max_size=12)), min_size=1, max_size=4
    )
)
def test_b64_objects_decode_or_are_400(server, items):
    body = json.dumps({"signature_name": "strings", "instances": items}).encode()
    status, payload = send(server, "POST", "/v1/models/text:predict", body)

    def valid(item):
        if isinstance(item, str):
            return True
        try:
            base64.b64decode(item["b64"], validate=True)
            return True
        except ValueError:
            return False

    if all(valid(item) for item in items):
        assert status == 200, payload
    else:
        assert_tf_serving_error(status, payload, allowed={400})


@FUZZ
@given(
    depth=st.integers(1, 100) | st.integers(100, 5000),
    opener=st.sampled_from(["[", '{"x": ', '[{"b64": ']),
    leaf=st.sampled_from(['1', '"a"', 'NaN', '{"b64": "YQ=="}', 'null', '[]']),
    key=st.sampled_from(["instances", "inputs", "signature_name"]),
    model=st.sampled_from(MODELS),
)
def test_nesting_at_any_depth_gets_an_answer_or_a_json_4xx(server, depth, opener, leaf, key, model):
    closer = {"[": "]", '{"x": ': "}", '[{"b64": ': "}]"}[opener]
    body = f'{{"{key}": {opener * depth}{leaf}{closer * depth}}}'.encode()
    status, payload = send(server, "POST", f"/v1/models/{model}:predict", body)
    assert_answer_or_error(status, payload)


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000,
        b"{" * 100_000,
        b'{"instances": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b'{"instances": ' + b"[" * 900 + b"1" + b"]" * 900 + b"}",
        b'{"instances": ' + b"[" * 40 + b"1" + b"]" * 40 + b"}",
        b'{"inputs": {"x": ' + b"[" * 70 + b'"a"' + b"]" * 70 + b"}}",
        b'{"instances": [' + b'{"x":' * 5000 + b"1" + b"}" * 5000 + b"]}",
        b'{"instances": [[1, 2, ' + b"9" * 5000 + b"]]}",
        b'{"instances": [[1e999, -1e999, 1e-999]]}',
        b'{"instances": [[1, 2, 3]], "instances": 7}',
        b"\xff\xfe\x00\x00",
        b'{"instances": "\xff\xfe"}',
        b"null",
        b"",
    ],
    ids=lambda body: body[:24].decode("latin-1"),
)
def test_deep_huge_or_broken_json_is_a_json_4xx(server, classifier, body):
    status, payload = send(server, "POST", "/v1/models/clf:predict", body)
    if body == b'{"instances": [[1, 2, 3]], "instances": 7}':
        # As TF Serving's parser (rapidjson): the first of duplicate keys wins, a valid request.
        assert status == 200, payload
    else:
        # 1e999 too: rapidjson refuses "Number too big to be stored in double."
        assert_tf_serving_error(status, payload)
    assert_still_serving(server, classifier)


def test_body_over_the_limit_is_413(server):
    body = json.dumps({"instances": [[1.0, 2.0, 3.0]] * (MAX_BODY_BYTES // 10)}).encode()
    status, payload = send(server, "POST", "/v1/models/clf:predict", body)
    assert_tf_serving_error(status, payload, allowed={413})


# ----------------------------------------------------------------------------- REST paths

TRAVERSALS = [
    "..",
    "../secret",
    "../../secret",
    "../../secret/passwd",
    "clf/../../../secret",
    "/etc/passwd",
    "....//secret",
    "..\\..\\secret",
    "%2e%2e",
    "secret",
]


def _encodings(name):
    return {
        name,
        urllib.parse.quote(name, safe=""),
        urllib.parse.quote(name, safe="/"),
        urllib.parse.quote(urllib.parse.quote(name, safe=""), safe=""),
        "".join(f"%{byte:02x}" for byte in name.encode()),
    }


model_names = (
    st.sampled_from(TRAVERSALS + list(MODELS))
    | st.text(max_size=12)
    | st.text(alphabet="./%\\:2eEfF", max_size=12)
)


@FUZZ
@given(
    name=model_names,
    encoding=st.integers(0, 4),
    method=st.sampled_from(["GET", "POST"])
    | st.sampled_from(["PUT", "DELETE", "OPTIONS", "TRACE", "PATCH", "CONNECT"])
    | st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=1, max_size=8),
    suffix=st.sampled_from(["", ":predict", "/metadata", "/versions/1", "/versions/1:predict", "/labels/x"]),
)
def test_model_names_never_reach_the_file_system(server, name, encoding, method, suffix):
    encoded = sorted(_encodings(name))[encoding % len(_encodings(name))]
    # http.client refuses raw non-ASCII and whitespace in the request target; quote those only.
    encoded = urllib.parse.quote(encoded, safe="/%:.\\~!$&'()*+,;=@")
    path = f"/v1/models/{encoded}{suffix}"
    body = json.dumps({"instances": [[1.0, 2.0, 3.0]]}).encode() if method == "POST" else b""
    status, payload = send(server, method, path, body)
    if method == "HEAD":  # no body by definition
        assert status == 200 or 400 <= status < 500
    elif status == 200:
        # Only the served models answer; nothing from the sentinel directory.
        decoded = urllib.parse.unquote(encoded)
        assert decoded in MODELS, (path, payload[:200])
    else:
        assert_tf_serving_error(status, payload)
    assert not _SENTINEL_OPENS, _SENTINEL_OPENS


@pytest.mark.parametrize("name", TRAVERSALS)
def test_traversal_names_are_not_found_and_open_nothing_outside_the_base_paths(server, name):
    for encoded in sorted(_encodings(name)):
        encoded = urllib.parse.quote(encoded, safe="/%:.\\")
        for method, suffix in [("POST", ":predict"), ("GET", ""), ("GET", "/metadata")]:
            body = json.dumps({"instances": [[1.0, 2.0]]}).encode() if method == "POST" else b""
            status, payload = send(server, method, f"/v1/models/{encoded}{suffix}", body)
            # 404 when the name parses as one path segment, 400 (malformed) when it does not.
            assert_tf_serving_error(status, payload, allowed={400, 404})
    assert not _SENTINEL_OPENS, _SENTINEL_OPENS


@pytest.mark.parametrize(
    "method, target",
    [
        ("TRACE", "/v1/models/clf"),
        ("CONNECT", "/v1/models/clf"),
        ("BREW", "/v1/models/clf:predict"),
        ("GET", "*"),
        ("GET", "http://evil.example/v1/models/clf"),
        ("GET", "//v1//models//clf"),
        ("GET", "/v1/models/clf/versions/99999999999999999999999"),
        ("GET", "/v1/models/clf/versions/-1"),
        ("GET", "/v1/models/%ff%fe%00"),
        ("GET", "/v1/models/%C3%A9t%C3%A9/metadata"),
        ("GET", "/v1/models/clf/metadata/../../../../etc/passwd"),
        ("DELETE", "/v1/models/clf"),
        ("PUT", "/v1/models/clf:predict"),
    ],
)
def test_odd_methods_and_targets_get_a_json_4xx(server, method, target):
    status, payload = send(server, method, target)
    assert_tf_serving_error(status, payload)


def test_raw_non_ascii_request_target_is_refused_and_server_keeps_serving(server, classifier):
    with socket.create_connection((server.host, server.rest_api_port), timeout=10) as sock:
        sock.sendall("GET /v1/models/ét\u00e9/../secret HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        head = sock.recv(65536).split(b"\r\n", 1)[0]
    status = int(head.split()[1])
    assert 400 <= status < 500, head
    assert_still_serving(server, classifier)


# ----------------------------------------------------------------------------- gRPC

DTYPES = [value for value in types_pb2.DataType.values() if value < 100] + [0, 999, 100_000]
VALUE_FIELDS = [
    "float_val", "double_val", "int_val", "int64_val", "string_val", "bool_val", "half_val",
    "uint32_val", "uint64_val",
]


@st.composite
def tensor_protos(draw):
    proto = tensor_pb2.TensorProto(dtype=draw(st.sampled_from(DTYPES)))
    if draw(st.booleans()):
        proto.tensor_shape.unknown_rank = True
    dims = draw(
        st.lists(
            st.integers(-3, 4) | st.sampled_from([2**20, 2**31, 2**40, 2**62, -(2**40)]),
            max_size=5,
        )
    )
    for size in dims:
        proto.tensor_shape.dim.add(size=size)
    if draw(st.booleans()):
        proto.tensor_content = draw(st.binary(max_size=64))
    else:
        field = draw(st.sampled_from(VALUE_FIELDS))
        values = {
            "float_val": st.floats(width=32, allow_nan=True),
            "double_val": st.floats(allow_nan=True),
            "int_val": st.integers(-(2**31), 2**31 - 1),
            "int64_val": st.integers(-(2**63), 2**63 - 1),
            "string_val": st.binary(max_size=8),
            "bool_val": st.booleans(),
            "half_val": st.integers(0, 2**16 - 1),
            "uint32_val": st.integers(0, 2**32 - 1),
            "uint64_val": st.integers(0, 2**64 - 1),
        }[field]
        getattr(proto, field).extend(draw(st.lists(values, max_size=8)))
    return proto


def well_formed(value):
    return tf.make_tensor_proto(value)


good_tensors = st.sampled_from(
    [
        well_formed(np.array(X, np.float32)),
        well_formed(np.array(X, np.float64)),
        well_formed(np.ones((2, 4), np.float32)),
        well_formed(np.zeros((0, 3), np.float32)),
        well_formed(np.full((1, 3), np.nan, np.float32)),
        well_formed(np.int32(3)),
        well_formed(np.int32(MAX_SAMPLES + 1)),
        well_formed(np.int32(-1)),
        well_formed(np.int64(7)),
        well_formed(np.array([b"abc", "é".encode()], object)),
        well_formed(np.array([[b"a", b"b", b"c"]], object)),
    ]
)


@FUZZ
@given(
    name=st.sampled_from(MODELS) | st.text(max_size=8),
    signature=st.sampled_from(SIGNATURES) | st.text(max_size=8),
    version=st.none() | st.integers(-(2**63), 2**63 - 1) | st.integers(0, 3),
    label=st.none() | st.text(max_size=4),
    inputs=st.dictionaries(
        st.sampled_from(["x", "num_samples", "seed", "s", "a", "b"]) | st.text(max_size=4),
        good_tensors | tensor_protos(),
        max_size=4,
    ),
    output_filter=st.lists(
        st.sampled_from(["mean", "stddev", "y", "length"]) | st.text(max_size=4), max_size=3
    ),
)
def test_grpc_predict_answers_or_fails_with_a_client_error(
    prediction_stub, name, signature, version, label, inputs, output_filter
):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    elif label is not None:
        request.model_spec.version_label = label
    for key, proto in inputs.items():
        request.inputs[key].CopyFrom(proto)
    request.output_filter.extend(output_filter)
    try:
        prediction_stub.Predict(request, timeout=30)
    except grpc.RpcError as error:
        assert error.code() in GRPC_ERRORS, (error.code(), error.details())


@pytest.mark.parametrize(
    "dims, values",
    [
        ([2**40, 3], {}),
        ([2**26, 3], {"float_val": [1.0]}),
        ([2**62, 2**62], {"float_val": [1.0]}),
        ([2**40, 3], {"tensor_content": b"\0" * 12}),
        ([-1, 3], {}),
        ([-(2**40), 3], {"float_val": [1.0]}),
        ([1] * 100, {"float_val": [1.0]}),
    ],
    ids=["huge no values", "huge one value", "overflowing", "huge short content", "negative",
         "very negative", "rank 100"],
)
def test_grpc_huge_or_negative_declared_shapes_are_invalid_argument(prediction_stub, dims, values):
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT)
    for size in dims:
        proto.tensor_shape.dim.add(size=size)
    for field, value in values.items():
        if field == "tensor_content":
            proto.tensor_content = value
        else:
            getattr(proto, field).extend(value)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "clf"
    request.model_spec.signature_name = "mc"
    request.inputs["x"].CopyFrom(proto)
    with pytest.raises(grpc.RpcError) as raised:
        prediction_stub.Predict(request, timeout=30)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, raised.value.details()


@pytest.mark.parametrize(
    "inputs, fragment",
    [
        ({"x": well_formed(np.array([["a", "b", "c"]], object))},
         "Expects arg[0] to be float but string is provided"),
        ({"x": tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, string_val=[b"1", b"2", b"3"])},
         "string_val"),
        ({"x": well_formed(np.array(X, np.float64))},
         "Expects arg[0] to be float but double is provided"),
        # Shapes are the graph's business, as in TF Serving: the Dense kernel refuses 4 features.
        ({"x": well_formed(np.ones((2, 4), np.float32))}, "Matrix size-incompatible"),
        ({}, "Missing but required: {x}"),
        ({"x": well_formed(np.array(X, np.float32)), "y": well_formed(np.int32(1))}, "Sent extra: {y}"),
        ({"x": tensor_pb2.TensorProto(dtype=types_pb2.DT_RESOURCE)}, "cannot be sent"),
    ],
    ids=["string for float", "string values in a float proto", "float64 for float32",
         "mismatched shape", "missing", "extra", "resource"],
)
def test_grpc_wrong_tensors_are_invalid_argument(prediction_stub, inputs, fragment):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "clf"
    for key, proto in inputs.items():
        request.inputs[key].CopyFrom(proto)
    with pytest.raises(grpc.RpcError) as raised:
        prediction_stub.Predict(request, timeout=30)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in raised.value.details()


@FUZZ
@given(
    name=model_names,
    fields=st.lists(st.sampled_from(["signature_def", "nope"]) | st.text(max_size=4), max_size=2),
    version=st.none() | st.integers(-(2**63), 2**63 - 1),
)
def test_grpc_metadata_and_status_answer_or_fail_with_a_client_error(
    prediction_stub, model_stub, name, fields, version
):
    metadata = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=fields)
    status = get_model_status_pb2.GetModelStatusRequest()
    for request in (metadata, status):
        request.model_spec.name = name
        if version is not None:
            request.model_spec.version.value = version
    for call, request in ((prediction_stub.GetModelMetadata, metadata), (model_stub.GetModelStatus, status)):
        try:
            call(request, timeout=30)
        except grpc.RpcError as error:
            assert error.code() in GRPC_ERRORS, (error.code(), error.details())
    assert not _SENTINEL_OPENS, _SENTINEL_OPENS


# ----------------------------------------------------------------------------- afterwards


def test_after_the_fuzzing_the_server_answers_correctly_over_both_apis(
    server, classifier, prediction_stub
):
    assert_still_serving(server, classifier)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "clf"
    request.inputs["x"].CopyFrom(well_formed(np.array(X, np.float32)))
    response = prediction_stub.Predict(request, timeout=30)
    expected = keras.ops.convert_to_numpy(classifier(np.array(X, np.float32)))
    (name,) = response.outputs
    np.testing.assert_allclose(tf.make_ndarray(response.outputs[name]), expected, rtol=1e-5, atol=1e-6)
    assert server.admission.running == 0 and server.admission.queued == 0
    assert not _SENTINEL_OPENS, _SENTINEL_OPENS
