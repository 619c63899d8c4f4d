"""TF Serving's `servables/tensorflow/get_model_metadata_impl_test.cc`, ported over gRPC.

TF Serving's test asks a ServerCore serving TensorFlow's half_plus_two as "test_model" at
version 123 for its metadata and compares the SignatureDefs it answers with the MetaGraphDef's
own. Here the model (built as in `test_tfs_predict_util.py`) sits in a zero-padded `00000123`
folder, the metadata comes from `PredictionService.GetModelMetadata`, and the SignatureDefs to
compare with are read from the SavedModel's saved_model.pb.

Not ported:
- Every case's SessionBundle instance (`UseSavedModel` false, whose signature is "regress"):
  the SessionBundle format is gone from TF Serving and TensorFlow.
- ModelSpecOverride: `GetModelMetadataWithModelSpec` is a C++ entry point that takes a
  ModelSpec in place of the request's; over RPC the spec is always the request's (an unknown
  name is MissingOrEmptyModelSpec's NOT_FOUND).
"""

import pytest

pytest.importorskip("tensorflow")
grpc = pytest.importorskip("grpc")
pytest.importorskip("tensorflow_serving")

from tensorflow.core.protobuf import saved_model_pb2  # noqa: E402
from tensorflow_serving.apis import get_model_metadata_pb2  # noqa: E402
from tensorflow_serving.apis import model_pb2  # noqa: E402

from test_tfs_predict_util import MODEL  # noqa: E402
from test_tfs_predict_util import RPC_TIMEOUT_S  # noqa: E402
from test_tfs_predict_util import VERSION  # noqa: E402
from test_tfs_predict_util import VERSION_DIR  # noqa: E402
from test_tfs_predict_util import save_tensorflow_half_plus_two  # noqa: E402
from test_tfs_predict_util import serve  # noqa: E402

pytestmark = pytest.mark.tf_only

SIGNATURE_DEF = "signature_def"


@pytest.fixture(scope="module")
def model_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("tfs_get_model_metadata_impl")
    save_tensorflow_half_plus_two(str(root / MODEL / VERSION_DIR), str(root / "scratch"))
    return root


@pytest.fixture(scope="module")
def stub(model_root):
    yield from serve(model_root, (MODEL,))


def on_disk_signature_defs(model_root):
    """The SignatureDefs of the SavedModel's MetaGraphDef, as TF Serving's test reads them."""
    saved_model = saved_model_pb2.SavedModel()
    with open(model_root / MODEL / VERSION_DIR / "saved_model.pb", "rb") as handle:
        saved_model.ParseFromString(handle.read())
    (meta_graph,) = saved_model.meta_graphs
    return meta_graph.signature_def


def metadata_request(spec=None, fields=(SIGNATURE_DEF,)):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=list(fields))
    if spec is not None:
        request.model_spec.CopyFrom(spec)
    return request


def get_metadata(stub, request):
    return stub.GetModelMetadata(request, timeout=RPC_TIMEOUT_S)


def metadata_code(stub, request):
    """The status code a GetModelMetadata call fails with."""
    with pytest.raises(grpc.RpcError) as info:
        get_metadata(stub, request)
    return info.value.code()


@pytest.mark.parametrize(
    "fields",
    [pytest.param((), id="no_field"), pytest.param(("some_stuff",), id="unknown_field")],
)
def test_metadata_fields_must_be_given_and_known(stub, fields):
    """TFS: get_model_metadata_impl_test.cc EmptyOrInvalidMetadataFieldList."""
    request = metadata_request(fields=fields)
    assert metadata_code(stub, request) == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    "spec, code",
    [
        pytest.param(None, "INVALID_ARGUMENT", id="no_model_spec"),
        pytest.param(model_pb2.ModelSpec(), "INVALID_ARGUMENT", id="no_name"),
        pytest.param(model_pb2.ModelSpec(name="test"), "NOT_FOUND", id="unknown_name"),
    ],
)
def test_missing_model_name_is_invalid_and_unknown_one_not_found(stub, spec, code):
    """TFS: get_model_metadata_impl_test.cc MissingOrEmptyModelSpec."""
    assert metadata_code(stub, metadata_request(spec)) == grpc.StatusCode[code]


def test_metadata_returns_the_model_signature_defs(stub, model_root):
    """TFS: get_model_metadata_impl_test.cc ReturnsSignaturesForValidModel."""
    spec = model_pb2.ModelSpec(name=MODEL)
    spec.version.value = VERSION
    response = get_metadata(stub, metadata_request(spec))
    assert response.model_spec == spec
    assert list(response.metadata) == [SIGNATURE_DEF]
    received = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata[SIGNATURE_DEF].Unpack(received)
    expected = on_disk_signature_defs(model_root)
    assert len(received.signature_def) == len(expected)
    for name in ("regress_x_to_y", "serving_default"):
        assert received.signature_def[name] == expected[name]
