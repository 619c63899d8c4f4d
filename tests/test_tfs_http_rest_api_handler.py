"""TF Serving's REST handler tests, run against `keras-dropout serve`'s REST API.

Port of `tensorflow_serving/model_servers/http_rest_api_handler_test.cc`. TF Serving's fixture
serves half_plus_two (rebuilt by tfs_models.py) as "saved_model_half_plus_two_2_versions" with
the version policy `specific { versions: 123 }` and the label "Version_Label" -> 123; here the
same models.config is given to a server started from `keras-dropout serve`'s command line.
Cases about the protocol call `RestHandler(manager).handle(method, path, body)` (the REST API
without I/O, over that server's models); cases about HTTP itself (which paths reach the API,
the Content-Type header) go through the server's REST port.

TF Serving's handler returns a canonical status; the REST API answers its HTTP status
(INVALID_ARGUMENT -> 400, NOT_FOUND -> 404, DESIGN.md section 6), so each case checks that and
the message substring TF Serving's case checks.

Not ported: nothing; every case has a black-box meaning.
"""

import json

import pytest

pytestmark = pytest.mark.tf_only

requests = pytest.importorskip("requests")
pytest.importorskip("tensorflow")
pytest.importorskip("tensorflow_serving")

import tfs_models  # noqa: E402
from tfs_server import half_plus_two_metadata  # noqa: E402
from tfs_server import start_in_process  # noqa: E402

from keras_dropout.serving.rest import RestHandler  # noqa: E402

MODEL_NAME = "saved_model_half_plus_two_2_versions"
MODEL_VERSION = 123
VERSION_LABEL = "Version_Label"
NONEXISTENT_VERSION_LABEL = "Version_Nonexistent"
VERSION_SUFFIX = f"/versions/{MODEL_VERSION}"
LABEL_SUFFIX = f"/labels/{VERSION_LABEL}"
UINT64_MAX = 2**64 - 1
REGRESS_BODY = '{"signature_name": "regress_x_to_y", "examples": [ { "x": 80.0 } ] }'
CLASSIFY_BODY = '{"signature_name": "classify_x_to_y", "examples": [ { "x": 20.0 } ] }'
BAD_REQUEST, NOT_FOUND = 400, 404
STATUS_123 = {
    "model_version_status": [
        {
            "version": "123",
            "state": "AVAILABLE",
            "status": {"error_code": "OK", "error_message": ""},
        }
    ]
}
MODEL_CONFIG = """
model_config_list {{
  config {{
    name: "{name}"
    base_path: "{base_path}"
    model_platform: "tensorflow"
    model_version_policy {{ specific {{ versions: {version} }} }}
    version_labels {{ key: "{label}" value: {version} }}
  }}
}}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("http_rest_api_handler")
    base_path = root / "half_plus_two"
    tfs_models.save_half_plus_two(str(base_path / "00000123"))
    config = root / "models.config"
    config.write_text(
        MODEL_CONFIG.format(
            name=MODEL_NAME, base_path=base_path, version=MODEL_VERSION, label=VERSION_LABEL
        )
    )
    running = start_in_process(["--port=0", "--rest_api_port=0", f"--model_config_file={config}"])
    yield running
    running.stop(grace=1)


@pytest.fixture(scope="module")
def handler(server):
    return RestHandler(server.manager)


def _process_request(handler, method, path, body=""):
    """TF Serving's ProcessRequest: the HTTP status and the parsed JSON body."""
    status, output = handler.handle(method, path, body.encode("utf-8"))
    return status, json.loads(output)


def _error_message(output):
    """TF Serving's GetJsonErrorMsg: the "error" string of an error body."""
    assert isinstance(output.get("error"), str), output
    return output["error"]


def _predict_path(suffix=""):
    return f"/v1/models/{MODEL_NAME}{suffix}:predict"


def test_path_regex(server):
    """TFS: http_rest_api_handler_test.cc kPathRegex (only /v1/... reaches the REST API)."""
    api = requests.get(server.rest_url + "/v1/models", timeout=20)
    assert api.status_code == BAD_REQUEST
    assert "Missing model name" in _error_message(api.json())
    for path in ("/statuspage", "/index"):
        assert requests.get(server.rest_url + path, timeout=20).status_code == NOT_FOUND


@pytest.mark.parametrize(
    "method, path, message",
    [
        ("GET", "/v1/foo", "Malformed request"),
        ("POST", "/v1/foo", "Malformed request"),
        ("GET", "/v1/models", "Missing model name"),
        ("GET", "/v1/models/debug/model_name", "Malformed request"),
        ("POST", "/v1/models", "Malformed request"),
        ("GET", "/v1/models/foo:predict", "Malformed request"),
        ("GET", "/v1/models/foo/version/50:predict", "Malformed request"),
        ("POST", "/v1/models/foo/version/50:regress", "Malformed request"),
        ("POST", "/v1/models/foo/versions/HELLO:regress", "Malformed request"),
        ("POST", f"/v1/models/foo/versions/{UINT64_MAX}:regress", "Failed to convert version"),
        ("POST", "/v1/models/foo/metadata", "Malformed request"),
        ("POST", "/v1/models/foo/label/some_label:regress", "Malformed request"),
        ("POST", "/v1/models/foo/versions/50/labels/some_label:regress", "Malformed request"),
        ("POST", "/v1/models/foo/versions/some_label:regress", "Malformed request"),
    ],
)
def test_unsupported_api_calls(handler, method, path, message):
    """TFS: http_rest_api_handler_test.cc UnsupportedApiCalls."""
    status, output = _process_request(handler, method, path)
    assert status == BAD_REQUEST
    assert message in _error_message(output)


@pytest.mark.parametrize(
    "path",
    [
        "/v1/models/foo:predict",
        "/v1/models/foo/versions/50:predict",
        # A valid model name run into an invalid version number (99), without "/versions/".
        f"/v1/models/{MODEL_NAME}99:predict",
    ],
)
def test_predict_model_name_version_errors(handler, path):
    """TFS: http_rest_api_handler_test.cc PredictModelNameVersionErrors."""
    status, _ = _process_request(handler, "POST", path, '{ "instances": [1] }')
    assert status == NOT_FOUND


@pytest.mark.parametrize(
    "path, body, message",
    [
        (_predict_path(), "", "JSON Parse error: The document is empty"),
        (_predict_path(), "instances = [1, 2]", "JSON Parse error: Invalid value"),
        (_predict_path(), '{ "instances": ["x", "y"] }', "not of expected type: float"),
        (
            _predict_path(f"/labels/{NONEXISTENT_VERSION_LABEL}"),
            '{ "instances": ["x", "y"] }',
            "Unrecognized servable version label",
        ),
        (
            _predict_path(),
            '{ "signature_name": 100 }',
            "'signature_name' key must be a string value.",
        ),
    ],
    ids=["empty", "bad_json", "wrong_type", "unknown_label", "signature_name_type"],
)
def test_predict_request_errors(handler, path, body, message):
    """TFS: http_rest_api_handler_test.cc PredictRequestErrors."""
    status, output = _process_request(handler, "POST", path, body)
    assert status == BAD_REQUEST
    assert message in _error_message(output)


@pytest.mark.parametrize(
    "path, body, expected",
    [
        (
            _predict_path(),
            '{"instances": [[1.0, 2.0], [3.0, 4.0]]}',
            {"predictions": [[2.5, 3.0], [3.5, 4.0]]},
        ),
        (_predict_path(VERSION_SUFFIX), '{"instances": [1.0, 2.0]}', {"predictions": [2.5, 3.0]}),
        (_predict_path(LABEL_SUFFIX), '{"instances": [1.0, 2.0]}', {"predictions": [2.5, 3.0]}),
        (
            _predict_path(VERSION_SUFFIX),
            '{"signature_name": "serving_default", "instances": [3.0, 4.0]}',
            {"predictions": [3.5, 4.0]},
        ),
        (
            _predict_path(VERSION_SUFFIX),
            '{"signature_name": "serving_default", "inputs": [3.0, 4.0]}',
            {"outputs": [3.5, 4.0]},
        ),
    ],
    ids=["latest", "version", "label", "signature_name", "columnar"],
)
def test_predict(handler, path, body, expected):
    """TFS: http_rest_api_handler_test.cc Predict."""
    assert _process_request(handler, "POST", path, body) == (200, expected)


@pytest.mark.parametrize(
    "suffix", ["", VERSION_SUFFIX, LABEL_SUFFIX], ids=["latest", "version", "label"]
)
def test_regress(handler, suffix):
    """TFS: http_rest_api_handler_test.cc Regress."""
    path = f"/v1/models/{MODEL_NAME}{suffix}:regress"
    assert _process_request(handler, "POST", path, REGRESS_BODY) == (200, {"results": [42]})


@pytest.mark.parametrize(
    "suffix, x, expected",
    [("", 20.0, 12), (LABEL_SUFFIX, 10.0, 7)],
    ids=["latest", "label"],
)
def test_classify(handler, suffix, x, expected):
    """TFS: http_rest_api_handler_test.cc Classify."""
    body = json.dumps({"signature_name": "classify_x_to_y", "examples": [{"x": x}]})
    path = f"/v1/models/{MODEL_NAME}{suffix}:classify"
    assert _process_request(handler, "POST", path, body) == (200, {"results": [[["", expected]]]})


@pytest.mark.parametrize(
    "suffix", ["", VERSION_SUFFIX, LABEL_SUFFIX], ids=["all", "version", "label"]
)
def test_get_status(handler, suffix):
    """TFS: http_rest_api_handler_test.cc GetStatus."""
    assert _process_request(handler, "GET", f"/v1/models/{MODEL_NAME}{suffix}") == (200, STATUS_123)


def test_get_model_metadata(handler):
    """TFS: http_rest_api_handler_test.cc GetModelMetadata (against
    saved_model_half_plus_two_2_versions_metadata.json; see `half_plus_two_metadata`)."""
    status, output = _process_request(handler, "GET", f"/v1/models/{MODEL_NAME}/metadata")
    assert status == 200
    assert output == half_plus_two_metadata(MODEL_NAME)


@pytest.mark.parametrize(
    "method, path, body",
    [
        ("POST", _predict_path(), '{"instances": [[1.0, 2.0], [3.0, 4.0]]}'),
        ("POST", f"/v1/models/{MODEL_NAME}:regress", REGRESS_BODY),
        ("POST", f"/v1/models/{MODEL_NAME}:classify", CLASSIFY_BODY),
        ("GET", f"/v1/models/{MODEL_NAME}", None),
        ("GET", f"/v1/models/{MODEL_NAME}/metadata", None),
    ],
    ids=["Predict", "Regress", "Classify", "GetStatus", "GetModelMetadata"],
)
def test_answers_are_json(server, method, path, body):
    """TFS: http_rest_api_handler_test.cc Predict, Regress, Classify, GetStatus,
    GetModelMetadata (each checks the answer's headers are exactly Content-Type:
    application/json)."""
    response = requests.request(method, server.rest_url + path, data=body, timeout=20)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "application/json"
