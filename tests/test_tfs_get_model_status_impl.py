"""TF Serving's `model_servers/get_model_status_impl_test.cc`, ported to a black box over gRPC.

TF Serving's test asks a ServerCore for the status of saved_model_half_plus_two_2_versions
(half_plus_two in the zero-padded folders `00000123` and `00000124`), served with the specific
version policy {123, 124}. Here the same model comes from a models.config and the status from
`ModelService.GetModelStatus`.

Not ported:
- ModelSpecOverride: `GetModelStatusWithModelSpec` is a C++ entry point that takes a ModelSpec
  in place of the request's; over RPC the spec is always the request's (an unknown name is
  InvalidModelNameFailure).
"""

import pytest

pytest.importorskip("tensorflow")
grpc = pytest.importorskip("grpc")
pytest.importorskip("tensorflow_serving")

from tensorflow_serving.apis import get_model_status_pb2  # noqa: E402
from tensorflow_serving.apis import model_pb2  # noqa: E402
from tensorflow_serving.apis import model_service_pb2_grpc  # noqa: E402

import serving_fixtures  # noqa: E402
import tfs_models  # noqa: E402
from keras_dropout.serving import Server  # noqa: E402

pytestmark = pytest.mark.tf_only

MODEL = "saved_model_half_plus_two_2_versions"
VERSIONS = {123: "00000123", 124: "00000124"}  # TF Serving's testdata folders are zero-padded.
NONEXISTENT_VERSION = 125
RPC_TIMEOUT_S = 30


@pytest.fixture(scope="module")
def stub(tmp_path_factory):
    root = tmp_path_factory.mktemp("tfs_get_model_status_impl")
    for folder in VERSIONS.values():
        tfs_models.save_half_plus_two(str(root / MODEL / folder))
    versions = " ".join(f"versions: {version}" for version in VERSIONS)
    config = serving_fixtures.write_model_config(
        str(root / "models.config"),
        {MODEL: (str(root / MODEL), [f"model_version_policy {{ specific {{ {versions} }} }}"])},
    )
    server = Server(
        model_config_file=config, port=0, rest_api_port=None, file_system_poll_wait_seconds=0
    )
    server.start()
    with grpc.insecure_channel(server.grpc_target) as channel:
        yield model_service_pb2_grpc.ModelServiceStub(channel)
    server.stop(grace=0)


def status_request(name=MODEL, version=None):
    request = get_model_status_pb2.GetModelStatusRequest(model_spec=model_pb2.ModelSpec(name=name))
    if version is not None:
        request.model_spec.version.value = version
    return request


def get_status(stub, request):
    return stub.GetModelStatus(request, timeout=RPC_TIMEOUT_S)


def status_code(stub, request):
    """The status code a GetModelStatus call fails with (a failed RPC carries no response)."""
    with pytest.raises(grpc.RpcError) as info:
        get_status(stub, request)
    return info.value.code()


def assert_ok(version_status):
    assert version_status.status.error_code == 0  # tensorflow.error.OK
    assert version_status.status.error_message == ""


def test_request_without_model_spec_is_invalid_argument(stub):
    """TFS: get_model_status_impl_test.cc MissingOrEmptyModelSpecFailure."""
    request = get_model_status_pb2.GetModelStatusRequest()
    assert status_code(stub, request) == grpc.StatusCode.INVALID_ARGUMENT


def test_unknown_model_is_not_found(stub):
    """TFS: get_model_status_impl_test.cc InvalidModelNameFailure."""
    assert status_code(stub, status_request("nonexistent_model")) == grpc.StatusCode.NOT_FOUND


def test_unknown_version_is_not_found(stub):
    """TFS: get_model_status_impl_test.cc InvalidModelVersionFailure."""
    request = status_request(version=NONEXISTENT_VERSION)
    assert status_code(stub, request) == grpc.StatusCode.NOT_FOUND


def test_status_without_version_lists_every_version(stub):
    """TFS: get_model_status_impl_test.cc AllVersionsSuccess."""
    response = get_status(stub, status_request())
    assert len(response.model_version_status) == 2
    assert {status.version for status in response.model_version_status} == set(VERSIONS)
    for version_status in response.model_version_status:
        assert_ok(version_status)


def test_status_of_one_version_lists_only_it(stub):
    """TFS: get_model_status_impl_test.cc SingleVersionSuccess."""
    response = get_status(stub, status_request(version=123))
    assert len(response.model_version_status) == 1
    assert response.model_version_status[0].version == 123
    assert_ok(response.model_version_status[0])
