"""TF Serving's `servables/tensorflow/predict_util_test.cc`, ported to a black box over gRPC.

TF Serving's test calls `RunPredict` on the servables of three ServerCores, all named
"test_model" at version 123: TensorFlow's half_plus_two (`cc/saved_model/testdata/half_plus_two`,
TF Serving's half_plus_two plus a `classify_x2_to_y3` signature), TF Serving's counter model and
bad_half_plus_two (no signatures); MethodNameCheck edits half_plus_two's MetaGraphDef in memory
to give serving_default an unsupported method_name. Here one server serves the four (the last
as half_plus_two plus a signature with that method_name) under four names, each in a
zero-padded `00000123` folder as in TF Serving's testdata, and every case is a Predict RPC;
the MethodNameCheck cases with the check on get a second server, run with
`--enable_signature_method_name_check`.

Not ported:
- ThreadPoolOptions: hands caller-owned inter/intra-op thread pools to `RunPredict`, a C++
  argument no RPC can carry; its response check is PredictionSuccess's.
"""

import os

import pytest

tf = pytest.importorskip("tensorflow")
grpc = pytest.importorskip("grpc")
pytest.importorskip("tensorflow_serving")

from tensorflow.core.framework import tensor_pb2  # noqa: E402
from tensorflow.core.framework import tensor_shape_pb2  # noqa: E402
from tensorflow.core.framework import types_pb2  # noqa: E402
from tensorflow_serving.apis import model_pb2  # noqa: E402
from tensorflow_serving.apis import predict_pb2  # noqa: E402
from tensorflow_serving.apis import prediction_service_pb2_grpc  # noqa: E402

import tfs_models  # noqa: E402
from keras_dropout.serving import Server  # noqa: E402
from keras_dropout.serving.servables import ModelConfig  # noqa: E402

pytestmark = pytest.mark.tf_only

tf1 = tf.compat.v1

MODEL = "test_model"
COUNTER = "counter_model"
BAD = "bad_half_plus_two"
METHOD_NAME = "method_name_model"
UNSUPPORTED_METHOD = "unsupported_method"
VERSION = 123
VERSION_DIR = "00000123"  # TF Serving's testdata folders are zero-padded.
RPC_TIMEOUT_S = 30


# ----------------------------------------------------------------------------- models


def _tensor_info(graph, name):
    return tf1.saved_model.utils.build_tensor_info(graph.get_tensor_by_name(name))


def _resave(source, path, extra_signatures):
    """Re-saves a TF1 SavedModel with its variables, plus the `extra_signatures(graph)` map."""
    with tf.Graph().as_default() as graph, tf1.Session() as session:
        meta_graph = tf1.saved_model.loader.load(session, ["serve"], source)
        signatures = dict(meta_graph.signature_def)
        signatures.update(extra_signatures(graph))
        builder = tf1.saved_model.Builder(path)
        builder.add_meta_graph_and_variables(session, ["serve"], signature_def_map=signatures)
        builder.save()
    return path


def save_tensorflow_half_plus_two(path, scratch):
    """TensorFlow's half_plus_two: TF Serving's plus `classify_x2_to_y3` (x2 -> scores y3)."""
    constants = tf1.saved_model.signature_constants

    def classify_x2_to_y3(graph):
        signature = tf1.saved_model.signature_def_utils.build_signature_def(
            inputs={constants.CLASSIFY_INPUTS: _tensor_info(graph, "x2:0")},
            outputs={constants.CLASSIFY_OUTPUT_SCORES: _tensor_info(graph, "y3:0")},
            method_name=constants.CLASSIFY_METHOD_NAME,
        )
        return {"classify_x2_to_y3": signature}

    source = tfs_models.save_half_plus_two(os.path.join(scratch, "half_plus_two"))
    return _resave(source, path, classify_x2_to_y3)


def save_bad_half_plus_two(path):
    """TF Serving's bad_half_plus_two as a SavedModel: y = 0.5 * x + 2 with no SignatureDef."""
    with tf.Graph().as_default(), tf1.Session() as session:
        a = tf1.Variable(0.5)
        b = tf1.Variable(2.0)
        x = tf1.placeholder(tf.float32)
        tf.add(tf.multiply(a, x), b)
        session.run(tf1.global_variables_initializer())
        builder = tf1.saved_model.Builder(path)
        builder.add_meta_graph_and_variables(session, ["serve"], signature_def_map={})
        builder.save()
    return path


def save_method_name_model(path, scratch):
    """half_plus_two plus `unsupported_method`: x -> y with method_name "not/supported/method"."""
    source = tfs_models.save_half_plus_two(os.path.join(scratch, "method_name_source"))

    def unsupported_method(graph):
        signature = tf1.saved_model.signature_def_utils.build_signature_def(
            inputs={"x": _tensor_info(graph, "x:0")},
            outputs={"y": _tensor_info(graph, "y:0")},
            method_name="not/supported/method",
        )
        return {UNSUPPORTED_METHOD: signature}

    return _resave(source, path, unsupported_method)


@pytest.fixture(scope="module")
def model_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("tfs_predict_util")
    scratch = str(root / "scratch")
    save_tensorflow_half_plus_two(str(root / MODEL / VERSION_DIR), scratch)
    tfs_models.save_counter(str(root / COUNTER / VERSION_DIR))
    save_bad_half_plus_two(str(root / BAD / VERSION_DIR))
    save_method_name_model(str(root / METHOD_NAME / VERSION_DIR), scratch)
    return root


def serve(root, names, **flags):
    """Starts a server for the models `names` under `root`; yields a PredictionService stub."""
    server = Server(
        models=[ModelConfig(name=name, base_path=str(root / name)) for name in names],
        port=0,
        rest_api_port=None,
        file_system_poll_wait_seconds=0,
        **flags,
    )
    server.start()
    with grpc.insecure_channel(server.grpc_target) as channel:
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel)
    server.stop(grace=0)


@pytest.fixture(scope="module")
def stub(model_root):
    """TF Serving's defaults: the method name check is off."""
    yield from serve(model_root, (MODEL, COUNTER, BAD, METHOD_NAME))


@pytest.fixture(scope="module")
def checked_stub(model_root):
    # Only the MethodNameCheck cases with the check on need `--enable_signature_method_name_check`.
    yield from serve(model_root, (METHOD_NAME,), enable_signature_method_name_check=True)


# ----------------------------------------------------------------------------- helpers


def model_spec(name=MODEL, signature_name=""):
    """`name` at version 123, as every request of TF Serving's test names it."""
    spec = model_pb2.ModelSpec(name=name, signature_name=signature_name)
    spec.version.value = VERSION
    return spec


def float_tensor(value, shape=None):
    """A DT_FLOAT TensorProto in `float_val`; no `tensor_shape` (a scalar) unless given."""
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[value])
    if shape is not None:
        proto.tensor_shape.CopyFrom(shape_proto(shape))
    return proto


def shape_proto(dims):
    """A TensorShapeProto of the sizes `dims`."""
    return tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=size) for size in dims]
    )


def string_tensor(value):
    """A DT_STRING TensorProto of shape [1]."""
    return tensor_pb2.TensorProto(
        dtype=types_pb2.DT_STRING, string_val=[value], tensor_shape=shape_proto([1])
    )


def scalar_output(value):
    """A float output as TF Serving answers it: `float_val`, an empty (present) tensor_shape."""
    return tensor_pb2.TensorProto(
        dtype=types_pb2.DT_FLOAT,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(),
        float_val=[value],
    )


def expected_response(spec, outputs):
    response = predict_pb2.PredictResponse(model_spec=spec)
    for key, proto in outputs.items():
        response.outputs[key].CopyFrom(proto)
    return response


def predict(stub, request):
    return stub.Predict(request, timeout=RPC_TIMEOUT_S)


def predict_error(stub, request):
    """The RpcError a Predict call must fail with."""
    with pytest.raises(grpc.RpcError) as info:
        predict(stub, request)
    return info.value


def assert_proto_equal(actual, expected):
    assert actual == expected, f"got:\n{actual}\nexpected:\n{expected}"


# ----------------------------------------------------------------------------- model spec


@pytest.mark.parametrize(
    "request_",
    [
        pytest.param(predict_pb2.PredictRequest(), id="empty_request"),
        pytest.param(predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec()), id="no_name"),
    ],
)
def test_request_without_model_name_is_invalid_argument(stub, request_):
    """TFS: predict_util_test.cc MissingOrEmptyModelSpec (empty request; name cleared)."""
    assert predict_error(stub, request_).code() == grpc.StatusCode.INVALID_ARGUMENT


def test_request_for_unknown_model_is_not_found(stub):
    """TFS: predict_util_test.cc MissingOrEmptyModelSpec (model name "test").

    `RunPredict` is handed test_model's servable and never reads the name, so the C++ test sees
    the missing inputs (INVALID_ARGUMENT); over RPC the name is looked up first, and TF Serving
    answers NOT_FOUND (predict_impl_test.cc MissingOrEmptyModelSpec).
    """
    request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name="test"))
    assert predict_error(stub, request).code() == grpc.StatusCode.NOT_FOUND


# ----------------------------------------------------------------------------- inputs


def test_request_without_inputs_is_invalid_argument(stub):
    """TFS: predict_util_test.cc EmptyInputList."""
    request = predict_pb2.PredictRequest(model_spec=model_spec())
    assert predict_error(stub, request).code() == grpc.StatusCode.INVALID_ARGUMENT


def test_unknown_inputs_name_the_extra_and_the_missing_ones(stub):
    """TFS: predict_util_test.cc InputTensorsDontMatchModelSpecInputs."""
    request = predict_pb2.PredictRequest(model_spec=model_spec())
    request.inputs["unknown_key1"].CopyFrom(string_tensor(b"any_value"))
    request.inputs["unknown_key2"].CopyFrom(float_tensor(1.0, shape=[1]))
    error = predict_error(stub, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Sent extra: {unknown_key1,unknown_key2}" in error.details()
    assert "Missing but required: {x}" in error.details()


def test_bool_input_for_float_signature_is_invalid_argument(stub):
    """TFS: predict_util_test.cc PredictionInvalidTensor."""
    request = predict_pb2.PredictRequest(model_spec=model_spec())
    request.inputs["x"].CopyFrom(tensor_pb2.TensorProto(dtype=types_pb2.DT_BOOL, bool_val=[True]))
    error = predict_error(stub, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Expects arg[0] to be float but bool is provided" in error.details()


def test_string_input_for_float_signature_is_invalid_argument(stub):
    """TFS: predict_util_test.cc InputTensorsHaveWrongType."""
    request = predict_pb2.PredictRequest(model_spec=model_spec(), output_filter=["y"])
    request.inputs["x"].CopyFrom(string_tensor(b"any_value"))
    error = predict_error(stub, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "to be float but string is provided" in error.details()


# ----------------------------------------------------------------------------- output filter


def x_request(output_filter):
    request = predict_pb2.PredictRequest(model_spec=model_spec(), output_filter=output_filter)
    request.inputs["x"].CopyFrom(float_tensor(2.0))
    return request


def test_output_filter_naming_no_output_is_invalid_argument(stub):
    """TFS: predict_util_test.cc OutputFiltersDontMatchModelSpecOutputs (unknown alias)."""
    error = predict_error(stub, x_request(["output_filter"]))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "output tensor alias not found in signature: output_filter" in error.details()


def test_output_filter_naming_an_output_succeeds(stub):
    """TFS: predict_util_test.cc OutputFiltersDontMatchModelSpecOutputs (filter "y")."""
    response = predict(stub, x_request(["y"]))
    assert_proto_equal(response.outputs["y"], scalar_output(3.0))


def test_output_filter_naming_an_output_twice_is_invalid_argument(stub):
    """TFS: predict_util_test.cc OutputFiltersDontMatchModelSpecOutputs (filter "y", "y")."""
    error = predict_error(stub, x_request(["y", "y"]))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "duplicate output tensor alias: y" in error.details()


# ----------------------------------------------------------------------------- signatures


def test_model_without_signatures_is_failed_precondition(stub):
    """TFS: predict_util_test.cc ModelMissingSignatures (run by TF Serving only internally)."""
    request = predict_pb2.PredictRequest(model_spec=model_spec(BAD))
    assert predict_error(stub, request).code() == grpc.StatusCode.FAILED_PRECONDITION


def test_prediction_answers_the_default_signature_with_typed_values(stub):
    """TFS: predict_util_test.cc PredictionSuccess."""
    request = predict_pb2.PredictRequest(model_spec=model_spec())
    request.inputs["x"].CopyFrom(float_tensor(2.0))
    assert_proto_equal(
        predict(stub, request),
        expected_response(model_spec(signature_name="serving_default"), {"y": scalar_output(3.0)}),
    )


@pytest.mark.parametrize(
    "signature_name, output_key",
    [
        pytest.param("regress_x2_to_y3", "outputs", id="PredictionWithNamedRegressionSignature"),
        pytest.param(
            "classify_x2_to_y3", "scores", id="PredictionWithNamedClassificationSignature"
        ),
    ],
)
def test_predict_runs_regress_and_classify_signatures(stub, signature_name, output_key):
    """Predict runs regress and classify SignatureDefs by name.

    TFS: predict_util_test.cc PredictionWithNamedRegressionSignature,
    PredictionWithNamedClassificationSignature.
    """
    spec = model_spec(signature_name=signature_name)
    request = predict_pb2.PredictRequest(model_spec=spec)
    request.inputs["inputs"].CopyFrom(float_tensor(2.0))
    assert_proto_equal(
        predict(stub, request), expected_response(spec, {output_key: scalar_output(4.0)})
    )


def test_predict_runs_stateful_signatures_without_inputs(stub):
    """TFS: predict_util_test.cc PredictionWithCustomizedSignatures.

    get_counter, incr_counter, reset_counter, incr_counter (output filter "output"), then
    incr_counter_by 3: one test, since each call sees the counter the previous one left.
    """
    calls = [
        ("get_counter", [], {}, 0.0),
        ("incr_counter", [], {}, 1.0),
        ("reset_counter", [], {}, 0.0),
        ("incr_counter", ["output"], {}, 1.0),
        ("incr_counter_by", [], {"delta": float_tensor(3.0)}, 4.0),
    ]
    for signature_name, output_filter, inputs, counter in calls:
        spec = model_spec(COUNTER, signature_name)
        request = predict_pb2.PredictRequest(model_spec=spec, output_filter=output_filter)
        for key, proto in inputs.items():
            request.inputs[key].CopyFrom(proto)
        assert_proto_equal(
            predict(stub, request), expected_response(spec, {"output": scalar_output(counter)})
        )


def method_name_request(signature_name):
    request = predict_pb2.PredictRequest(model_spec=model_spec(METHOD_NAME, signature_name))
    request.inputs["x"].CopyFrom(float_tensor(2.0))
    return request


@pytest.mark.parametrize("signature_name", ["serving_default", UNSUPPORTED_METHOD])
def test_any_method_name_predicts_while_the_check_is_off(stub, signature_name):
    """TFS: predict_util_test.cc MethodNameCheck (SetSignatureMethodNameCheckFeature(false)).

    TF Serving checks method names only under `--enable_signature_method_name_check` (default
    false), so a signature whose method_name is "not/supported/method" still predicts.
    """
    response = predict(stub, method_name_request(signature_name))
    assert_proto_equal(response.outputs["y"], scalar_output(3.0))


def test_predict_method_name_predicts_while_the_check_is_on(checked_stub):
    """TFS: predict_util_test.cc MethodNameCheck (SetSignatureMethodNameCheckFeature(true))."""
    response = predict(checked_stub, method_name_request("serving_default"))
    assert_proto_equal(response.outputs["y"], scalar_output(3.0))


def test_unsupported_method_name_fails_while_the_check_is_on(checked_stub):
    """TFS: predict_util_test.cc MethodNameCheck (SetSignatureMethodNameCheckFeature(true)).

    TF Serving's predict_util.cc answers INTERNAL: "Expected prediction signature method_name to
    be one of {tensorflow/serving/predict, tensorflow/serving/classify,
    tensorflow/serving/regress}. Was: not/supported/method".
    """
    error = predict_error(checked_stub, method_name_request(UNSUPPORTED_METHOD))
    assert error.code() == grpc.StatusCode.INTERNAL
