"""The embedded TF-Serving-compatible server, spoken to as TF Serving's clients speak to it.

Specification: DESIGN.md sections 4 ("keras-dropout serve") and 6 (TF Serving facts). REST is
driven with raw HTTP and Python's json (which reads the NaN/Infinity tokens); gRPC with the stubs
from `tensorflow_serving.apis`. The SavedModels come from `serving_fixtures` (plain `tf.Module`
signatures, every one scaled by a per-version factor so an answer tells which version served it).

One server runs for the module, with three models from a models.config:
- demo: versions 1 (factor 2) and 2 (factor 3), policy `all`, labels stable -> 1, canary -> 2;
- hot: version 1 (factor 2); a test adds version 2 while the server runs;
- fragile: version 1 (factor 2); tests add broken versions while the server runs.
"""

import base64
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
grpc = pytest.importorskip("grpc")
requests = pytest.importorskip("requests")
pytest.importorskip("uvicorn")
pytest.importorskip("tensorflow_serving")

from tensorflow_serving.apis import classification_pb2  # noqa: E402
from tensorflow_serving.apis import get_model_metadata_pb2  # noqa: E402
from tensorflow_serving.apis import get_model_status_pb2  # noqa: E402
from tensorflow_serving.apis import model_service_pb2_grpc  # noqa: E402
from tensorflow_serving.apis import predict_pb2  # noqa: E402
from tensorflow_serving.apis import prediction_service_pb2_grpc  # noqa: E402

import serving_fixtures as fixtures  # noqa: E402
from keras_dropout.serving import Server  # noqa: E402

pytestmark = pytest.mark.tf_only

POLL_S = 0.2
X = [[1.0, 2.0], [3.0, 4.0]]


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    return {factor: fixtures.save_scale_model(str(root / f"x{factor}"), factor) for factor in (2, 3)}


@pytest.fixture(scope="module")
def model_root(tmp_path_factory, sources):
    root = tmp_path_factory.mktemp("models")
    fixtures.place_version(sources[2], str(root / "demo"), 1)
    fixtures.place_version(sources[3], str(root / "demo"), 2)
    os.makedirs(root / "demo" / "not_a_version")  # non-integer names are ignored
    fixtures.place_version(sources[2], str(root / "hot"), 1)
    fixtures.place_version(sources[2], str(root / "fragile"), 1)
    fixtures.write_model_config(
        str(root / "models.config"),
        {
            "demo": (
                str(root / "demo"),
                [
                    "model_version_policy { all {} }",
                    'version_labels { key: "stable" value: 1 }',
                    'version_labels { key: "canary" value: 2 }',
                ],
            ),
            "hot": (str(root / "hot"), []),
            "fragile": (str(root / "fragile"), []),
        },
    )
    return root


@pytest.fixture(scope="module")
def server(model_root):
    server = Server(
        model_config_file=str(model_root / "models.config"),
        port=0,
        rest_api_port=0,
        file_system_poll_wait_seconds=POLL_S,
    )
    server.start()
    yield server
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


def post(server, path, body):
    data = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return requests.post(
        server.rest_url + path, data=data, headers={"Content-Type": "application/json"}, timeout=30
    )


def get(server, path):
    return requests.get(server.rest_url + path, timeout=30)


def answer(response):
    assert response.headers["content-type"] == "application/json"
    return json.loads(response.text)  # Python's json accepts NaN / Infinity / -Infinity


def rest_y(server, model="demo", x=X):
    response = post(server, f"/v1/models/{model}:predict", {"instances": x})
    assert response.status_code == 200, response.text
    return np.array(answer(response)["predictions"])


def assert_still_serving(server):
    np.testing.assert_allclose(rest_y(server), np.array(X) * 3)


def predict_request(name="demo", signature_name="", inputs=None, **spec):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = signature_name
    if "version" in spec:
        request.model_spec.version.value = spec["version"]
    if "label" in spec:
        request.model_spec.version_label = spec["label"]
    inputs = {"x": np.array(X, np.float32)} if inputs is None else inputs
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    return request


def status_of(server, model):
    return {s["version"]: s for s in answer(get(server, f"/v1/models/{model}"))["model_version_status"]}


def wait_until(condition, timeout=15.0, interval=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return False


# ----------------------------------------------------------------------------- REST predict


def test_rest_row_format_batches_instances_and_answers_predictions(server):
    response = post(server, "/v1/models/demo:predict", {"instances": X})
    assert response.status_code == 200
    assert answer(response) == {"predictions": [[3.0, 6.0], [9.0, 12.0]]}


def test_rest_float32_outputs_use_their_shortest_decimal(server):
    response = post(server, "/v1/models/demo:predict", {"inputs": [[0.1, 0.7]]})
    assert response.status_code == 200
    assert response.text == '{"outputs":[[0.3,2.1]]}'  # not 0.30000001192092896


def test_rest_columnar_format_answers_bare_value_for_one_output(server):
    for inputs in ([[1, 2]], {"x": [[1, 2]]}):
        response = post(server, "/v1/models/demo:predict", {"inputs": inputs})
        assert answer(response) == {"outputs": [[3.0, 6.0]]}


def test_rest_signature_name_selects_a_multi_input_signature(server):
    rows = [{"a": [1, 2], "b": 10}, {"a": [3, 4], "b": 20}]
    response = post(server, "/v1/models/demo:predict", {"signature_name": "multi", "instances": rows})
    assert answer(response) == {
        "predictions": [{"b_twice": 20, "sum": 19.0}, {"b_twice": 40, "sum": 41.0}]
    }
    columns = {"a": [[1, 2], [3, 4]], "b": [10, 20]}
    response = post(server, "/v1/models/demo:predict", {"signature_name": "multi", "inputs": columns})
    assert answer(response) == {"outputs": {"b_twice": [20, 40], "sum": [19.0, 41.0]}}


def test_rest_columnar_format_takes_scalar_inputs_and_seeds_repeat(server):
    def mc(seed):
        body = {"signature_name": "mc_sample", "inputs": {"x": X, "num_samples": 32, "seed": seed}}
        outputs = answer(post(server, "/v1/models/demo:predict", body))["outputs"]
        assert set(outputs) == {"mean", "stddev"}
        return np.array(outputs["mean"])

    np.testing.assert_array_equal(mc(7), mc(7))
    assert not np.array_equal(mc(7), mc(8))
    np.testing.assert_allclose(mc(7), np.array(X) * 3, atol=1.0)


@pytest.mark.parametrize(
    "path, factor",
    [
        ("/v1/models/demo:predict", 3),
        ("/v1/models/demo/versions/1:predict", 2),
        ("/v1/models/demo/versions/2:predict", 3),
        ("/v1/models/demo/labels/stable:predict", 2),
        ("/v1/models/demo/labels/canary:predict", 3),
        ("/V1/MODELS/demo/Versions/1:PREDICT", 2),
        ("/v1/Models/demo/LABELS/canary:Predict", 3),
    ],
)
def test_rest_versions_labels_and_case_insensitive_paths(server, path, factor):
    response = post(server, path, {"instances": X})
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(answer(response)["predictions"], np.array(X) * factor)


def test_rest_nan_and_infinity_tokens_are_read_and_written(server):
    body = '{"signature_name": "log", "instances": [[-1, 0], [NaN, Infinity]]}'
    response = post(server, "/v1/models/demo:predict", body)
    assert response.status_code == 200
    assert "NaN" in response.text and "-Infinity" in response.text
    (a, b), (c, d) = answer(response)["predictions"]
    assert math.isnan(a) and b == -math.inf and math.isnan(c) and d == math.inf


def test_rest_b64_objects_carry_bytes_and_bytes_outputs_come_back_as_b64(server):
    encoded = base64.b64encode("héllo".encode()).decode()
    body = {"signature_name": "strings", "instances": [{"b64": encoded}, "abc"]}
    response = post(server, "/v1/models/demo:predict", body)
    assert answer(response) == {
        "predictions": [
            {"echo_bytes": {"b64": encoded}, "length": 5},
            {"echo_bytes": {"b64": base64.b64encode(b"abc").decode()}, "length": 3},
        ]
    }


# ----------------------------------------------------------------------------- REST status, metadata


def test_rest_status_json_is_tf_servings(server):
    ok = {"error_code": "OK", "error_message": ""}
    assert answer(get(server, "/v1/models/demo")) == {
        "model_version_status": [
            {"version": "2", "state": "AVAILABLE", "status": ok},
            {"version": "1", "state": "AVAILABLE", "status": ok},
        ]
    }
    one = {"model_version_status": [{"version": "1", "state": "AVAILABLE", "status": ok}]}
    assert answer(get(server, "/v1/models/demo/versions/1")) == one
    assert answer(get(server, "/v1/models/demo/labels/stable")) == one
    assert answer(get(server, "/V1/MODELS/demo/VERSIONS/1")) == one


def test_rest_metadata_json_is_tf_servings(server):
    response = get(server, "/v1/models/demo/metadata")
    assert response.status_code == 200
    body = answer(response)
    assert body["model_spec"] == {"name": "demo", "signature_name": "", "version": "2"}
    signatures = body["metadata"]["signature_def"]["signature_def"]
    assert set(fixtures.SIGNATURES) <= set(signatures)
    serving_default = signatures["serving_default"]
    assert serving_default["method_name"] == "tensorflow/serving/predict"
    assert serving_default["inputs"]["x"] == {
        "dtype": "DT_FLOAT",
        "tensor_shape": {"dim": [{"size": "-1", "name": ""}, {"size": "2", "name": ""}], "unknown_rank": False},
        "name": "serving_default_x:0",
    }
    assert signatures["mc_sample"]["inputs"]["num_samples"]["dtype"] == "DT_INT32"
    assert answer(get(server, "/v1/models/demo/labels/stable/metadata"))["model_spec"]["version"] == "1"


def test_status_lists_integer_versions_only(server):
    assert set(status_of(server, "demo")) == {"1", "2"}


# ----------------------------------------------------------------------------- REST errors

PREDICT = "/v1/models/demo:predict"
MC_SAMPLE = {"signature_name": "mc_sample"}
MULTI = {"signature_name": "multi"}


def _error(case_id, method, path, body, status, fragment):
    return pytest.param(method, path, body, status, fragment, id=case_id)


REST_ERRORS = [
    _error("unknown model", "POST", "/v1/models/nope:predict", {"instances": X}, 404,
           "Servable not found for request: Latest(nope)"),
    _error("unknown version", "POST", "/v1/models/demo/versions/9:predict", {"instances": X}, 404,
           "Specific(demo, 9)"),
    _error("unknown label", "POST", "/v1/models/demo/labels/beta:predict", {"instances": X}, 400,
           "Unrecognized servable version label: beta"),
    _error("unknown signature", "POST", PREDICT, {"signature_name": "nope", "instances": X}, 400,
           '"nope" not found'),
    _error("missing input", "POST", PREDICT, {**MULTI, "inputs": {"a": X}}, 400,
           "Missing but required: {b}"),
    _error("extra input", "POST", PREDICT, {"inputs": {"x": X, "z": [1]}}, 400, "Sent extra: {z}"),
    _error("bad json", "POST", PREDICT, '{"instances": [[1, 2]', 400, "JSON Parse error"),
    _error("body not an object", "POST", PREDICT, "[1, 2]", 400, "JSON object"),
    _error("both formats", "POST", PREDICT, {"instances": X, "inputs": X}, 400, "only one of"),
    _error("no tensors", "POST", PREDICT, {"signature_name": "serving_default"}, 400,
           "Missing 'inputs' or 'instances'"),
    _error("string for float", "POST", PREDICT, {"instances": [["a", 2]]}, 400,
           "is not of expected type: float"),
    _error("fraction for int", "POST", PREDICT, {**MULTI, "inputs": {"a": X, "b": [1.5, 2]}}, 400,
           "is not of expected type: int64"),
    _error("int out of range", "POST", PREDICT, {**MULTI, "inputs": {"a": X, "b": [2**70, 1]}}, 400,
           "out of range"),
    _error("ragged rows", "POST", PREDICT, {"instances": [[1, 2], [3]]}, 400, "rectangular"),
    _error("over the cap", "POST", PREDICT,
           {**MC_SAMPLE, "inputs": {"x": X, "num_samples": 1000, "seed": 0}}, 400,
           "num_samples must be <= max_samples=64"),
    _error("scalar input in row format", "POST", PREDICT,
           {**MC_SAMPLE, "instances": [{"x": [1, 2], "num_samples": 2, "seed": 0}]}, 400, "scalar"),
    _error("scalar output in row format", "POST", PREDICT,
           {"signature_name": "stats", "instances": X}, 400, "total"),
    # demo's serving_default is a predict signature: its input is "x", not Examples.
    _error("classify on a predict signature", "POST", "/v1/models/demo:classify",
           {"examples": [{}]}, 400, "No classification inputs found"),
    _error("malformed path", "POST", "/v1/modelz/demo:predict", {"instances": X}, 400,
           "Malformed request"),
    _error("get on predict", "GET", PREDICT, None, 400, "Malformed request"),
    _error("status of unknown model", "GET", "/v1/models/nope", None, 404,
           "Could not find any versions of model nope"),
    _error("status of unknown version", "GET", "/v1/models/demo/versions/9", None, 404,
           "Could not find version 9 of model demo"),
    _error("metadata of unknown model", "GET", "/v1/models/nope/metadata", None, 404,
           "Servable not found"),
]


@pytest.mark.parametrize("method, path, body, status, fragment", REST_ERRORS)
def test_rest_errors_have_tf_serving_status_and_message_and_server_keeps_serving(
    server, method, path, body, status, fragment
):
    response = post(server, path, body) if method == "POST" else get(server, path)
    assert response.status_code == status, response.text
    error = answer(response)
    assert set(error) == {"error"}
    assert fragment in error["error"]
    assert_still_serving(server)


# ----------------------------------------------------------------------------- gRPC


def test_grpc_predict_answers_outputs_and_echoes_the_model_spec(prediction_stub):
    response = prediction_stub.Predict(predict_request(), timeout=30)
    assert response.model_spec.name == "demo"
    assert response.model_spec.version.value == 2
    assert response.model_spec.signature_name == "serving_default"
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["y"]), np.array(X) * 3)

    response = prediction_stub.Predict(predict_request(label="stable"), timeout=30)
    assert response.model_spec.version.value == 1
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["y"]), np.array(X) * 2)


def test_grpc_predict_runs_scalar_inputs_and_respects_output_filter(prediction_stub):
    inputs = {"x": np.array(X, np.float32), "num_samples": np.int32(8), "seed": np.int64(3)}
    request = predict_request(signature_name="mc_sample", inputs=inputs)
    request.output_filter.append("mean")
    response = prediction_stub.Predict(request, timeout=30)
    assert set(response.outputs) == {"mean"}
    assert response.model_spec.signature_name == "mc_sample"
    assert tf.make_ndarray(response.outputs["mean"]).shape == (2, 2)


def test_grpc_get_model_metadata_returns_the_signature_defs(prediction_stub):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "demo"
    response = prediction_stub.GetModelMetadata(request, timeout=30)
    assert response.model_spec.version.value == 2
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signature_map)
    assert set(fixtures.SIGNATURES) <= set(signature_map.signature_def)
    assert set(signature_map.signature_def["multi"].inputs) == {"a", "b"}


def test_grpc_get_model_status_lists_versions(model_stub):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "demo"
    response = model_stub.GetModelStatus(request, timeout=30)
    assert [(s.version, s.state) for s in response.model_version_status] == [
        (2, get_model_status_pb2.ModelVersionStatus.AVAILABLE),
        (1, get_model_status_pb2.ModelVersionStatus.AVAILABLE),
    ]


F32 = np.array(X, np.float32)
CODE = grpc.StatusCode
GRPC_ERRORS = [
    pytest.param(predict_request(name="nope"), CODE.NOT_FOUND, "Servable not found",
                 id="unknown model"),
    pytest.param(predict_request(version=9), CODE.NOT_FOUND, "Specific(demo, 9)",
                 id="unknown version"),
    pytest.param(predict_request(signature_name="nope"), CODE.FAILED_PRECONDITION, "not found",
                 id="unknown signature"),
    pytest.param(predict_request(signature_name="multi", inputs={"a": F32}), CODE.INVALID_ARGUMENT,
                 "Missing but required: {b}", id="missing input"),
    pytest.param(predict_request(inputs={"x": F32, "z": F32}), CODE.INVALID_ARGUMENT,
                 "Sent extra: {z}", id="extra input"),
    pytest.param(predict_request(inputs={"x": np.array(X)}), CODE.INVALID_ARGUMENT,
                 "Expects arg[0] to be float but double is provided", id="float64 for float32"),
    pytest.param(
        predict_request(
            signature_name="mc_sample",
            inputs={"x": F32, "num_samples": np.int32(1000), "seed": np.int64(0)},
        ),
        CODE.INVALID_ARGUMENT, "num_samples must be <= max_samples=64", id="over the cap",
    ),
]


@pytest.mark.parametrize(
    "body, expected",
    [
        ({"instances": [[1, 2, 3]]}, {"predictions": [[3.0, 6.0, 9.0]]}),
        ({"inputs": [1, 2]}, {"outputs": [3.0, 6.0]}),
    ],
    ids=["other inner shape", "other rank"],
)
def test_shapes_other_than_the_signatures_are_fed_as_tf_serving_feeds_them(server, body, expected):
    # TF Serving checks only dtypes against the SignatureDef: demo's x * factor takes any shape.
    response = post(server, PREDICT, body)
    assert response.status_code == 200, response.text
    assert answer(response) == expected
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        reply = stub.Predict(predict_request(inputs={"x": np.ones((2, 3), np.float32)}), timeout=30)
    np.testing.assert_array_equal(tf.make_ndarray(reply.outputs["y"]), np.full((2, 3), 3.0))


@pytest.mark.parametrize("request_, code, fragment", GRPC_ERRORS)
def test_grpc_errors_have_tf_serving_codes_and_server_keeps_serving(
    prediction_stub, request_, code, fragment
):
    with pytest.raises(grpc.RpcError) as raised:
        prediction_stub.Predict(request_, timeout=30)
    assert raised.value.code() == code
    assert fragment in raised.value.details()
    response = prediction_stub.Predict(predict_request(), timeout=30)
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["y"]), np.array(X) * 3)


def test_grpc_bad_output_filter_and_unknown_status_are_errors(prediction_stub, model_stub):
    request = predict_request()
    request.output_filter.append("nope")
    with pytest.raises(grpc.RpcError) as raised:
        prediction_stub.Predict(request, timeout=30)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status_request = get_model_status_pb2.GetModelStatusRequest()
    status_request.model_spec.name = "nope"
    with pytest.raises(grpc.RpcError) as raised:
        model_stub.GetModelStatus(status_request, timeout=30)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


def test_grpc_classify_on_a_predict_signature_is_invalid(prediction_stub):
    # Classify itself is TF Serving's (tests/test_tfs_classifier.py); demo has no classify
    # signature, and its predict signature takes "x", not serialized Examples.
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "demo"
    request.input.example_list.examples.add()
    with pytest.raises(grpc.RpcError) as raised:
        prediction_stub.Classify(request, timeout=30)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "No classification inputs found" in raised.value.details()


# ----------------------------------------------------------------------------- concurrency


def test_concurrent_requests_from_8_threads_get_their_own_answers(server, prediction_stub):
    failures = []

    def worker(seed):
        rng = np.random.default_rng(seed)
        try:
            for i in range(6):
                x = rng.normal(size=(3, 2)).astype(np.float32)
                if i % 2:
                    y = rest_y(server, x=x.tolist())
                else:
                    response = prediction_stub.Predict(predict_request(inputs={"x": x}), timeout=30)
                    y = tf.make_ndarray(response.outputs["y"])
                np.testing.assert_allclose(y, x * 3, rtol=1e-6)
        except Exception as error:  # collected and reported from the main thread
            failures.append(error)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures


# ----------------------------------------------------------------------------- versions on disk


def test_new_version_written_atomically_becomes_the_default_within_the_poll_interval(
    server, model_root, sources
):
    np.testing.assert_allclose(rest_y(server, "hot"), np.array(X) * 2)
    written = time.monotonic()
    fixtures.place_version(sources[3], str(model_root / "hot"), 2)
    assert wait_until(lambda: "2" in status_of(server, "hot"))
    noticed = time.monotonic() - written
    assert noticed < POLL_S + 2.0  # one poll interval, plus slack for a loaded CI machine
    assert wait_until(lambda: np.allclose(rest_y(server, "hot"), np.array(X) * 3))
    assert wait_until(lambda: status_of(server, "hot")["1"]["state"] == "END")
    status = status_of(server, "hot")
    assert status["2"]["state"] == "AVAILABLE"
    assert status["1"]["status"]["error_code"] == "OK"  # unloaded, not failed


@pytest.mark.parametrize(
    "version, place, message",
    [
        (2, "corrupt", "SavedModel"),
        (3, "failing warmup", "Warmup record 1"),
    ],
)
def test_broken_version_is_reported_and_never_replaces_the_good_one(
    server, model_root, sources, version, place, message
):
    base = str(model_root / "fragile")
    if place == "corrupt":
        fixtures.place_corrupt_version(base, version)
    else:
        fixtures.place_version_with_failing_warmup(sources[3], base, version)
    key = str(version)
    assert wait_until(lambda: status_of(server, "fragile").get(key, {}).get("state") == "END")
    status = status_of(server, "fragile")
    assert status[key]["status"]["error_code"] != "OK"
    assert message in status[key]["status"]["error_message"]
    assert status["1"]["state"] == "AVAILABLE"
    time.sleep(2 * POLL_S)  # a few more polls change nothing
    np.testing.assert_allclose(rest_y(server, "fragile"), np.array(X) * 2)
    assert status_of(server, "fragile")["1"]["state"] == "AVAILABLE"


# ----------------------------------------------------------------------------- limits, shutdown


@pytest.fixture(scope="module")
def strict_server(model_root):
    server = Server(
        model_name="demo",
        model_base_path=str(model_root / "demo"),
        port=0,
        rest_api_port=0,
        max_body_bytes=4096,
        request_timeout_s=0.25,
    )
    server.start()
    yield server
    server.stop(grace=0)


def test_body_over_the_limit_is_413_and_server_keeps_serving(strict_server):
    response = post(strict_server, PREDICT, {"instances": [[1.0, 2.0]] * 500})
    assert response.status_code == 413
    assert "max_body_bytes" in answer(response)["error"]
    np.testing.assert_allclose(rest_y(strict_server), np.array(X) * 3)


def test_request_past_the_timeout_is_504_and_server_keeps_serving(strict_server):
    body = {"signature_name": "slow", "inputs": {"iterations": 1500}}
    response = post(strict_server, PREDICT, body)
    assert response.status_code == 504
    assert "Deadline exceeded" in answer(response)["error"]
    np.testing.assert_allclose(rest_y(strict_server), np.array(X) * 3)


_SERVE = (
    "import argparse, sys\n"
    "from keras_dropout.serving.server import add_serve_arguments, serve_forever\n"
    "parser = add_serve_arguments(argparse.ArgumentParser())\n"
    "sys.exit(serve_forever(parser.parse_args(sys.argv[1:])))\n"
)


def test_sigterm_lets_in_flight_requests_finish_then_exits_zero(model_root):
    args = [
        "--port=0",
        "--rest_api_port=0",
        "--model_name=demo",
        f"--model_base_path={model_root / 'demo'}",
    ]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            [sys.executable, "-c", _SERVE, *args], stdout=subprocess.PIPE, stderr=log, text=True, env=env
        )
        try:
            rest_address = None
            for line in process.stdout:
                if line.startswith("Exporting HTTP/REST API at:"):
                    rest_address = line.split("at:", 1)[1].split()[0]
                    break
            if not rest_address:
                process.wait(timeout=30)
                log.seek(0)
                pytest.fail("the server did not start:\n" + log.read().decode(errors="replace")[-3000:])
            url = f"http://{rest_address}{PREDICT}"
            result = {}

            def slow_request():
                body = {"signature_name": "slow", "inputs": {"iterations": 3000}}
                result["response"] = requests.post(url, json=body, timeout=60)

            in_flight = threading.Thread(target=slow_request)
            in_flight.start()
            time.sleep(1.0)  # the request is being served (it takes ~2 s)
            process.send_signal(signal.SIGTERM)
            in_flight.join()
            assert result["response"].status_code == 200
            assert process.wait(timeout=30) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


def test_models_config_version_policies_choose_versions_like_tf_serving():
    from keras_dropout.serving.servables import parse_model_config

    text = """model_config_list {
      config { name: "latest" base_path: "/m/a" }
      config { name: "two" base_path: "/m/b" model_version_policy { latest { num_versions: 2 } } }
      config { name: "every" base_path: "/m/c" model_version_policy { all {} } }
      config { name: "pinned" base_path: "/m/d"
               model_version_policy { specific { versions: 1 versions: 4 } }
               version_labels { key: "stable" value: 1 } }
    }"""
    configs = {config.name: config for config in parse_model_config(text)}
    on_disk = {1, 2, 3}
    assert configs["latest"].select(on_disk) == {3}
    assert configs["two"].select(on_disk) == {2, 3}
    assert configs["every"].select(on_disk) == {1, 2, 3}
    assert configs["pinned"].select(on_disk) == {1}
    assert configs["pinned"].version_labels == {"stable": 1}
    with pytest.raises(ValueError, match="Error parsing text-format tensorflow.serving.ModelServerConfig"):
        parse_model_config("model_config_list { config { nme: 'x' } }")
