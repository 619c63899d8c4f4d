"""TF Serving's `servables/tensorflow/predict_impl_test.cc`, ported to a black box over gRPC.

TF Serving's test runs `TensorflowPredictor::Predict` against ServerCores serving "test_model"
at version 123: TensorFlow's half_plus_two and bad_half_plus_two (no signatures), each once as a
SavedModel and once as a legacy SessionBundle. Here one server serves the SavedModel pair
under two names, from zero-padded `00000123` folders as in TF Serving's testdata; the models are
the ones `test_tfs_predict_util.py` builds.

Not ported:
- Every case's SessionBundle instance (`UseSavedModel` false, including the INVALID_ARGUMENT
  that named regress/classify signatures got from it): the SessionBundle format is gone from
  TF Serving and TensorFlow; only SavedModels are served.
"""

import pytest

pytest.importorskip("tensorflow")
grpc = pytest.importorskip("grpc")
pytest.importorskip("tensorflow_serving")

from tensorflow_serving.apis import model_pb2  # noqa: E402
from tensorflow_serving.apis import predict_pb2  # noqa: E402

from test_tfs_predict_util import BAD  # noqa: E402
from test_tfs_predict_util import MODEL  # noqa: E402
from test_tfs_predict_util import VERSION_DIR  # noqa: E402
from test_tfs_predict_util import assert_proto_equal  # noqa: E402
from test_tfs_predict_util import float_tensor  # noqa: E402
from test_tfs_predict_util import model_spec  # noqa: E402
from test_tfs_predict_util import predict  # noqa: E402
from test_tfs_predict_util import save_bad_half_plus_two  # noqa: E402
from test_tfs_predict_util import save_tensorflow_half_plus_two  # noqa: E402
from test_tfs_predict_util import scalar_output  # noqa: E402
from test_tfs_predict_util import serve  # noqa: E402
from test_tfs_predict_util import string_tensor  # noqa: E402

pytestmark = pytest.mark.tf_only


@pytest.fixture(scope="module")
def stub(tmp_path_factory):
    root = tmp_path_factory.mktemp("tfs_predict_impl")
    save_tensorflow_half_plus_two(str(root / MODEL / VERSION_DIR), str(root / "scratch"))
    save_bad_half_plus_two(str(root / BAD / VERSION_DIR))
    yield from serve(root, (MODEL, BAD))


def predict_code(stub, request):
    """The status code a Predict call fails with."""
    with pytest.raises(grpc.RpcError) as info:
        predict(stub, request)
    return info.value.code()


def assert_outputs_equal(response, outputs):
    # The 2017 test's expected responses carry no model_spec: TF Serving has filled it in since
    # (predict_util_test.cc checks it), so only the outputs are compared here.
    expected = predict_pb2.PredictResponse()
    for key, proto in outputs.items():
        expected.outputs[key].CopyFrom(proto)
    actual = predict_pb2.PredictResponse()
    actual.CopyFrom(response)
    actual.ClearField("model_spec")
    assert_proto_equal(actual, expected)


def x_request(signature_name="", key="x", output_filter=()):
    """A request for test_model 123 with the scalar 2.0 as input `key`."""
    request = predict_pb2.PredictRequest(
        model_spec=model_spec(signature_name=signature_name), output_filter=output_filter
    )
    request.inputs[key].CopyFrom(float_tensor(2.0))
    return request


@pytest.mark.parametrize(
    "request_, code",
    [
        pytest.param(predict_pb2.PredictRequest(), "INVALID_ARGUMENT", id="empty_request"),
        pytest.param(
            predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec()),
            "INVALID_ARGUMENT",
            id="no_name",
        ),
        pytest.param(
            predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name="test")),
            "NOT_FOUND",
            id="unknown_name",
        ),
    ],
)
def test_missing_model_name_is_invalid_and_unknown_one_not_found(stub, request_, code):
    """TFS: predict_impl_test.cc MissingOrEmptyModelSpec."""
    assert predict_code(stub, request_) == grpc.StatusCode[code]


def test_request_without_inputs_is_invalid_argument(stub):
    """TFS: predict_impl_test.cc EmptyInputList."""
    request = predict_pb2.PredictRequest(model_spec=model_spec())
    assert predict_code(stub, request) == grpc.StatusCode.INVALID_ARGUMENT


def test_input_not_in_the_signature_is_invalid_argument(stub):
    """TFS: predict_impl_test.cc InputTensorsDontMatchModelSpecInputs."""
    request = predict_pb2.PredictRequest(model_spec=model_spec())
    request.inputs["key"].CopyFrom(string_tensor(b"any_key"))
    assert predict_code(stub, request) == grpc.StatusCode.INVALID_ARGUMENT


def test_output_filter_naming_no_output_is_invalid_argument(stub):
    """TFS: predict_impl_test.cc OutputFiltersDontMatchModelSpecOutputs (unknown alias)."""
    request = x_request(output_filter=["output_filter"])
    assert predict_code(stub, request) == grpc.StatusCode.INVALID_ARGUMENT


def test_output_filter_naming_an_output_succeeds(stub):
    """TFS: predict_impl_test.cc OutputFiltersDontMatchModelSpecOutputs (filter "y")."""
    assert list(predict(stub, x_request(output_filter=["y"])).outputs) == ["y"]


def test_output_filter_naming_an_output_twice_is_invalid_argument(stub):
    """TFS: predict_impl_test.cc OutputFiltersDontMatchModelSpecOutputs (filter "y", "y")."""
    request = x_request(output_filter=["y", "y"])
    assert predict_code(stub, request) == grpc.StatusCode.INVALID_ARGUMENT


def test_string_input_for_float_signature_is_invalid_argument(stub):
    """TFS: predict_impl_test.cc InputTensorsHaveWrongType."""
    request = predict_pb2.PredictRequest(model_spec=model_spec(), output_filter=["y"])
    request.inputs["x"].CopyFrom(string_tensor(b"any_key"))
    assert predict_code(stub, request) == grpc.StatusCode.INVALID_ARGUMENT


def test_model_without_signatures_is_failed_precondition(stub):
    """TFS: predict_impl_test.cc ModelMissingSignatures."""
    request = predict_pb2.PredictRequest(model_spec=model_spec(BAD))
    assert predict_code(stub, request) == grpc.StatusCode.FAILED_PRECONDITION


def test_prediction_answers_the_default_signature(stub):
    """TFS: predict_impl_test.cc PredictionSuccess."""
    assert_outputs_equal(predict(stub, x_request()), {"y": scalar_output(3.0)})


def test_predict_runs_a_named_regression_signature(stub):
    """TFS: predict_impl_test.cc PredictionWithNamedRegressionSignature."""
    response = predict(stub, x_request("regress_x2_to_y3", key="inputs"))
    assert_outputs_equal(response, {"outputs": scalar_output(4.0)})


def test_predict_runs_a_named_classification_signature(stub):
    """TFS: predict_impl_test.cc PredictionWithNamedClassificationSignature."""
    response = predict(stub, x_request("classify_x2_to_y3", key="inputs"))
    assert_outputs_equal(response, {"scores": scalar_output(4.0)})
