"""TF Serving's `servables/tensorflow/regressor_test.cc`, ported to `inference.regress`.

TF Serving's test runs the regressor on a fake Session that copies each Example's float
"output" feature into the output tensor (shape [batch] for the default signature, [batch, 1]
plus one for "output_plus_one", rank 3 for the improperly sized one) and on a mock Session that
returns fixed tensors. Here both are one real TF1-graph SavedModel (`save_fake_regressor`):
`tf.io.parse_example` reads "output", and the "mock" signatures return constants of the mock's
shapes and dtypes. Each TF Serving test runs with the method_name check on and off, as the
`check_method_name` fixture does here; TF Serving's `Regress` and `RunRegress` calls in each
test are the one `inference.regress` here.

Not ported:
- The expected RunOptions timeout (42 ms) the fake Session checks: a C++ Session argument with
  no equivalent in `Servable.run`.
"""

import pytest

tf = pytest.importorskip("tensorflow")
pytest.importorskip("tensorflow_serving")

from google.protobuf import text_format  # noqa: E402
from tensorflow_serving.apis import regression_pb2  # noqa: E402

import tfs_models  # noqa: E402
from keras_dropout.serving.errors import ServingError  # noqa: E402
from keras_dropout.serving.inference import regress  # noqa: E402
from keras_dropout.serving.servables import load_servable  # noqa: E402
from test_tfs_classifier import constant, example, failing, save_graph_model  # noqa: E402

pytestmark = pytest.mark.tf_only

tf1 = tf.compat.v1
CLASSIFY = tf.saved_model.CLASSIFY_METHOD_NAME
REGRESS = tf.saved_model.REGRESS_METHOD_NAME
MODEL = "test_model"
VERSION = 1


# ----------------------------------------------------------------------------- models


def _regressor_signatures(examples):
    output = tf1.io.parse_example(
        examples, {"output": tf1.io.FixedLenFeature([1], tf.float32)}
    )["output"]
    vector = tf.reshape(output, [-1])  # The fake's default output is [batch], not [batch, 1].
    return {
        "serving_default": ({"outputs": vector}, REGRESS),
        "output_plus_one": ({"outputs": output + 1}, REGRESS),
        "invalid_classification_signature": ({"classes": output + 1}, CLASSIFY),
        "ImproperlySizedOutputSignature": (
            {"outputs": tf.zeros(tf.concat([tf.shape(output), [10]], axis=0))},
            REGRESS,
        ),
        "empty": ({}, None),
        "run_fails": ({"outputs": failing(vector, "Run totally failed")}, REGRESS),
        "two_outputs": ({"outputs": constant([2], tf.float32)}, REGRESS),
        "string_output": ({"outputs": constant([1], tf.string)}, REGRESS),
        "unsupported_method": ({"outputs": vector}, "not/supported/method"),
        "no_method": ({"outputs": vector}, None),
    }


def save_fake_regressor(path):
    """The fake/mock Sessions of regressor_test.cc as one SavedModel (see the module doc).

    Signatures (input "inputs", serialized Examples with a float "output"): serving_default
    (output, [batch]), output_plus_one (output + 1, [batch, 1]),
    invalid_classification_signature (a classification one), ImproperlySizedOutputSignature
    ([batch, 1, 10]), empty (an empty SignatureDef), run_fails (an assertion "Run totally
    failed"), the mock ones two_outputs (float [2]) and string_output (string [1]), and
    unsupported_method / no_method (method_name "not/supported/method" / none).
    """
    return save_graph_model(path, _regressor_signatures)


@pytest.fixture(scope="module")
def servable(tmp_path_factory):
    path = save_fake_regressor(str(tmp_path_factory.mktemp("fake_regressor") / "1"))
    return load_servable(MODEL, VERSION, path)


@pytest.fixture(scope="module")
def half_plus_two(tmp_path_factory):
    path = tfs_models.save_half_plus_two(str(tmp_path_factory.mktemp("half_plus_two") / "1"))
    return load_servable(MODEL, VERSION, path)


@pytest.fixture(params=[True, False], ids=["method_check", "no_method_check"])
def check_method_name(request):
    return request.param


# ----------------------------------------------------------------------------- helpers


def make_request(signature_name="", examples=(), context=None):
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = MODEL
    request.model_spec.signature_name = signature_name
    if context is None:
        request.input.example_list.examples.extend(examples)
    else:
        with_context = request.input.example_list_with_context
        with_context.context.CopyFrom(context)
        with_context.examples.extend(examples)
    return request


def result(*values):
    text = "".join(f"regressions {{ value: {value} }}" for value in values)
    return text_format.Parse(text, regression_pb2.RegressionResult())


def regress_error(servable, request, check_method_name):
    with pytest.raises(ServingError) as info:
        regress(servable, request, check_method_name=check_method_name)
    return info.value


# ----------------------------------------------------------------------------- tests


def test_basic_example_list(servable, check_method_name):
    """TFS: regressor_test.cc BasicExampleList"""
    request = make_request(examples=[example(output=2.0), example(output=3.0)])
    response = regress(servable, request, check_method_name=check_method_name)
    assert response.result == result(2.0, 3.0)


def test_basic_example_list_with_context(servable, check_method_name):
    """TFS: regressor_test.cc BasicExampleListWithContext"""
    empty = tf.train.Example()
    request = make_request(examples=[empty, empty], context=example(output=3.0))
    response = regress(servable, request, check_method_name=check_method_name)
    assert response.result == result(3.0, 3.0)


def test_valid_named_signature(servable, check_method_name):
    """TFS: regressor_test.cc ValidNamedSignature"""
    request = make_request("output_plus_one", [example(output=2.0), example(output=3.0)])
    response = regress(servable, request, check_method_name=check_method_name)
    assert response.result == result(3.0, 4.0)


@pytest.mark.parametrize(
    "signature_name",
    [
        pytest.param("invalid_classification_signature", id="InvalidNamedSignature"),
        pytest.param("ImproperlySizedOutputSignature", id="MalformedOutputs"),
    ],
)
def test_signature_that_cannot_regress_is_invalid_argument(
    servable, check_method_name, signature_name
):
    """TFS: regressor_test.cc InvalidNamedSignature, MalformedOutputs"""
    request = make_request(signature_name, [example(output=2.0), example(output=3.0)])
    assert regress_error(servable, request, check_method_name).code == "INVALID_ARGUMENT"


def test_missing_regression_signature(servable, check_method_name):
    """TFS: regressor_test.cc MissingRegressionSignature"""
    request = make_request("empty", [example(**{"class": "uno"})])
    assert regress_error(servable, request, check_method_name).code == "INVALID_ARGUMENT"


def test_malformed_outputs_names_the_shape(servable):
    """The shape check's message, with TF Serving's shape notation (regressor.cc)."""
    request = make_request("ImproperlySizedOutputSignature", [example(output=2.0)] * 2)
    assert (
        "Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got "
        "[2,1,10]" in regress_error(servable, request, False).message
    )


def test_unknown_signature_is_invalid_argument(servable):
    """regressor.cc GetRegressionSignatureDef: an unknown name is INVALID_ARGUMENT."""
    error = regress_error(servable, make_request("no_such_signature", [example(output=2.0)]), False)
    assert error.code == "INVALID_ARGUMENT"
    assert "No signature was found with the name: no_such_signature" in error.message


@pytest.mark.parametrize(
    "input_kind",
    [
        pytest.param("input", id="EmptyInput"),
        pytest.param("example_list", id="EmptyExampleList"),
        pytest.param("example_list_with_context", id="EmptyExampleListWithContext"),
    ],
)
def test_empty_input(servable, check_method_name, input_kind):
    """TFS: regressor_test.cc EmptyInput, EmptyExampleList, EmptyExampleListWithContext"""
    request = make_request()
    request.input.Clear()
    if input_kind == "example_list":
        request.input.example_list.SetInParent()
    elif input_kind == "example_list_with_context":
        request.input.example_list_with_context.context.CopyFrom(example(output=3.0))
    error = regress_error(servable, request, check_method_name)
    assert error.code == "INVALID_ARGUMENT"
    assert "Input is empty" in error.message


def test_runs_fails(servable, check_method_name):
    """TFS: regressor_test.cc RunsFails"""
    request = make_request("run_fails", [example(output=2.0)])
    assert "Run totally failed" in str(regress_error(servable, request, check_method_name))


@pytest.mark.parametrize(
    "signature_name, message",
    [
        pytest.param("two_outputs", "output batch size", id="UnexpectedOutputTensorSize"),
        pytest.param(
            "string_output", "Expected output Tensor of DT_FLOAT", id="UnexpectedOutputTensorType"
        ),
    ],
)
def test_bad_outputs(servable, check_method_name, signature_name, message):
    """TFS: regressor_test.cc UnexpectedOutputTensorSize, UnexpectedOutputTensorType"""
    request = make_request(signature_name, [example(output=2.0)])
    error = regress_error(servable, request, check_method_name)
    assert error.code == "INVALID_ARGUMENT"
    assert message in str(error)


def test_method_name_check(servable, check_method_name):
    """TFS: regressor_test.cc MethodNameCheck"""
    examples = [example(output=2.0)]
    request = make_request("serving_default", examples)
    assert regress(servable, request, check_method_name=check_method_name).result == result(2.0)
    for signature_name in ("unsupported_method", "no_method"):
        request = make_request(signature_name, examples)
        if check_method_name:
            error = regress_error(servable, request, check_method_name)
            assert error.code == "INVALID_ARGUMENT"
            assert "Expected regression signature method_name to be" in error.message
        else:
            assert regress(servable, request).result == result(2.0)


def test_response_names_model_version_and_signature(servable):
    """util.cc MakeModelSpec, as RunRegress fills the response: "" is serving_default."""
    response = regress(servable, make_request("", [example(output=2.0)]))
    assert response.model_spec.name == MODEL
    assert response.model_spec.signature_name == "serving_default"
    assert response.model_spec.version.value == VERSION


@pytest.mark.parametrize(
    "signature_name, expected", [("regress_x_to_y", 3.0), ("regress_x_to_y2", 4.0)]
)
def test_half_plus_two_regress(half_plus_two, check_method_name, signature_name, expected):
    """TF Serving's half_plus_two: y = 0.5 * x + 2, y2 = 0.5 * x + 3, here at x = 2."""
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = MODEL
    request.model_spec.signature_name = signature_name
    request.input.example_list.examples.append(tfs_models.example(x=2.0))
    response = regress(half_plus_two, request, check_method_name=check_method_name)
    assert response.result == result(expected)
