"""TF Serving's REST path parsing tests, run against the REST API of `keras-dropout serve`.

Port of `tensorflow_serving/model_servers/http_rest_api_util_test.cc`. TF Serving's cases call
`ParseModelInfo(method, path, ...)` and check the model name, version, label, method and
subresource it parses (percent-encoded reserved characters decoded), or that the path does not
parse. Here the paths go to `RestHandler(manager).handle(method, path, body)` (the REST API
without sockets) over models that make every parse visible:

- "modelname" and "modelname!#$%&'()*+,/:;=?@[]" (the name TF Serving's cases encode), each
  serving version 99 with the labels "latest" and "latest!#$%&'()*+,/:;=?@[]" (-> 99);
- a path parses when its request is answered 200: a status naming version 99, metadata whose
  model_spec names the decoded model and version 99, a prediction (the method);
- a path that does not parse is answered as TF Serving's handler answers it: 400 "Malformed
  request"; a version beyond int64 is 400 "Failed to convert version".

Not ported: nothing; every case has a black-box meaning.
"""

import json

import pytest

pytestmark = pytest.mark.tf_only

pytest.importorskip("tensorflow")
pytest.importorskip("tensorflow_serving")

import serving_fixtures as fixtures  # noqa: E402

from keras_dropout.serving.rest import RestHandler  # noqa: E402
from keras_dropout.serving.servables import ModelConfig  # noqa: E402
from keras_dropout.serving.servables import ModelManager  # noqa: E402

RESERVED = "!#$%&'()*+,/:;=?@[]"
RESERVED_ENCODED = "%21%23%24%25%26%27%28%29%2A%2B%2C%2F%3A%3B%3D%3F%40%5B%5D"
VERSION = 99
LABELS = {"latest": VERSION, "latest" + RESERVED: VERSION}
PREDICT_BODY = b'{"instances": [[1.0, 2.0]]}'


@pytest.fixture(scope="module")
def handler(tmp_path_factory):
    root = tmp_path_factory.mktemp("http_rest_api_util")
    source = fixtures.save_scale_model(str(root / "source"), 2)
    fixtures.place_version(source, str(root / "model"), VERSION)
    configs = [
        ModelConfig(name, str(root / "model"), version_labels=LABELS)
        for name in ("modelname", "modelname" + RESERVED)
    ]
    manager = ModelManager(configs, file_system_poll_wait_seconds=0)
    manager.start()
    yield RestHandler(manager)
    manager.stop()


def _answer(handler, method, path, body=b""):
    status, payload = handler.handle(method, path, body)
    return status, json.loads(payload)


def _assert_status_of_version_99(handler, path):
    status, answer = _answer(handler, "GET", path)
    assert status == 200, answer
    assert [entry["version"] for entry in answer["model_version_status"]] == [str(VERSION)]


def _assert_metadata_of(handler, path, model_name):
    status, answer = _answer(handler, "GET", path)
    assert status == 200, answer
    assert answer["model_spec"]["name"] == model_name
    assert answer["model_spec"]["version"] == str(VERSION)


def _assert_predicts(handler, path):
    status, answer = _answer(handler, "POST", path, PREDICT_BODY)
    assert status == 200, answer
    assert answer == {"predictions": [[2.0, 4.0]]}


def _assert_does_not_parse(handler, method, path):
    status, answer = _answer(handler, method, path, PREDICT_BODY if method == "POST" else b"")
    assert status == 400, answer
    assert answer["error"] == f"Malformed request: {method} {path}"


def test_parse_model_info_for_get(handler):
    """TFS: http_rest_api_util_test.cc TestParseModelInfoForGet"""
    # Reserved characters in the model name.
    _assert_status_of_version_99(handler, "/v1/models/modelname" + RESERVED_ENCODED)
    _assert_metadata_of(
        handler, f"/v1/models/modelname{RESERVED_ENCODED}/metadata", "modelname" + RESERVED
    )
    # Model version.
    _assert_status_of_version_99(handler, "/v1/models/modelname/versions/99")
    _assert_metadata_of(handler, "/v1/models/modelname/versions/99/metadata", "modelname")
    # Labels, and labels with reserved characters.
    _assert_status_of_version_99(handler, "/v1/models/modelname/labels/latest")
    _assert_status_of_version_99(handler, "/v1/models/modelname/labels/latest" + RESERVED_ENCODED)
    # Metadata (the subresource), and metadata with reserved characters in name and label.
    _assert_metadata_of(handler, "/v1/models/modelname/labels/latest/metadata", "modelname")
    _assert_metadata_of(
        handler,
        f"/v1/models/modelname{RESERVED_ENCODED}/labels/latest{RESERVED_ENCODED}/metadata",
        "modelname" + RESERVED,
    )
    # Failure cases.
    for path in ("/v1/foo", "/v1/models/foo:predict", "/v1/models/foo/version/50:predict"):
        _assert_does_not_parse(handler, "GET", path)


def test_parse_model_info_for_post(handler):
    """TFS: http_rest_api_util_test.cc TestParseModelInfoForPost"""
    # Reserved characters in the model name; the method.
    _assert_predicts(handler, f"/v1/models/modelname{RESERVED_ENCODED}:predict")
    # Model version.
    _assert_predicts(handler, "/v1/models/modelname/versions/99:predict")
    # Labels, labels with reserved characters, and both name and label with them.
    _assert_predicts(handler, "/v1/models/modelname/labels/latest:predict")
    _assert_predicts(handler, f"/v1/models/modelname/labels/latest{RESERVED_ENCODED}:predict")
    _assert_predicts(
        handler, f"/v1/models/modelname{RESERVED_ENCODED}/labels/latest{RESERVED_ENCODED}:predict"
    )
    # Failure cases.
    for path in (
        "/v1/foo",
        "/v1/models",
        "/v1/models/foo/version/50:predict",
        "/v1/models/foo/versions/string:predict",
        "/v1/models/foo/metadata",
        "/v1/models/foo/versions/50/labels/some_label:regress",
    ):
        _assert_does_not_parse(handler, "POST", path)
    status, answer = _answer(
        handler, "POST", f"/v1/models/foo/versions/{2**64 - 1}:predict", PREDICT_BODY
    )
    assert status == 400, answer
    assert "Failed to convert version" in answer["error"]
