"""TF Serving's `servables/tensorflow/multi_inference_test.cc`, ported to `multi_inference`.

TF Serving's test is typed over two models served as "test_model" (the runner is given version
1): the TF1 half_plus_two (`cc/saved_model/testdata/half_plus_two`) with the method_name check
on, and a TF2 half_plus_two (`saved_model_half_plus_two_tf2_cpu`) with it off, since
`tf.saved_model.save` writes every signature with method_name tensorflow/serving/predict. Here
the `model` fixture does the same with `tfs_models.save_half_plus_two` and `save_half_plus_two_tf2`
below (the same signatures as `tf.Module` functions). Each TF Serving test checks both the
`TensorFlowMultiInferenceRunner` and `RunMultiInference`, one code path, `multi_inference` here.

Not ported:
- ThreadPoolOptions: hands caller-owned inter/intra-op thread pools to `RunMultiInference` and
  counts what they scheduled, a C++ Session argument with no equivalent in `Servable.run`; its
  response check is ValidSingleSignatureTest's.
"""

import pytest

tf = pytest.importorskip("tensorflow")
pytest.importorskip("tensorflow_serving")

from google.protobuf import text_format  # noqa: E402
from tensorflow_serving.apis import inference_pb2  # noqa: E402

import tfs_models  # noqa: E402
from keras_dropout.serving.errors import ServingError  # noqa: E402
from keras_dropout.serving.inference import multi_inference  # noqa: E402
from keras_dropout.serving.servables import load_servable  # noqa: E402

pytestmark = pytest.mark.tf_only

CLASSIFY = tf.saved_model.CLASSIFY_METHOD_NAME
REGRESS = tf.saved_model.REGRESS_METHOD_NAME
PREDICT = tf.saved_model.PREDICT_METHOD_NAME
MODEL = "test_model"
VERSION = 1


# ----------------------------------------------------------------------------- models


class _HalfPlusTwo(tf.Module):
    """half_plus_two's signatures as TF2 functions: y = a*x + b, y2 = a*x + c (a=0.5, b=2, c=3)."""

    def __init__(self):
        super().__init__()
        self.a = tf.Variable(0.5)
        self.b = tf.Variable(2.0)
        self.c = tf.Variable(3.0)

    def _x(self, examples):
        return tf.io.parse_example(examples, {"x": tf.io.FixedLenFeature([1], tf.float32)})["x"]

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def regress_x_to_y(self, inputs):
        return {"outputs": self.a * self._x(inputs) + self.b}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def regress_x_to_y2(self, inputs):
        return {"outputs": self.a * self._x(inputs) + self.c}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def classify_x_to_y(self, inputs):
        return {"scores": self.a * self._x(inputs) + self.b}

    @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32, name="x")])
    def serving_default(self, x):
        return {"y": self.a * x + self.b}


def save_half_plus_two_tf2(path):
    """A TF2 (`tf.saved_model.save`) half_plus_two with regress/classify signatures on Examples."""
    module = _HalfPlusTwo()
    names = ("regress_x_to_y", "regress_x_to_y2", "classify_x_to_y", "serving_default")
    tf.saved_model.save(module, path, signatures={name: getattr(module, name) for name in names})
    return path


@pytest.fixture(scope="module", params=["tf1", "tf2"])
def model(request, tmp_path_factory):
    """(servable, check_method_name): on for the TF1 model, off for the TF2 one, as in TFS."""
    path = str(tmp_path_factory.mktemp(f"half_plus_two_{request.param}") / "1")
    if request.param == "tf1":
        tfs_models.save_half_plus_two(path)
    else:
        save_half_plus_two_tf2(path)
    return load_servable(MODEL, VERSION, path), request.param == "tf1"


# ----------------------------------------------------------------------------- helpers


def make_request(*tasks, x=2.0):
    """TF Serving's AddInput({{"x", x}}) (no input when x is None) and PopulateTask per task.

    Args:
        *tasks: (signature_name, method_name) pairs, each for model "test_model".
        x: the one example's float feature "x", or None for no input at all.
    """
    request = inference_pb2.MultiInferenceRequest()
    if x is not None:
        request.input.example_list.examples.append(tfs_models.example(x=x))
    for signature_name, method_name in tasks:
        task = request.tasks.add()
        task.model_spec.name = MODEL
        task.model_spec.signature_name = signature_name
        task.method_name = method_name
    return request


def expected(*results):
    """A MultiInferenceResponse; each argument is (signature_name, text-format result field)."""
    text = "".join(
        f"results {{ model_spec {{ name: '{MODEL}' signature_name: '{signature_name}' "
        f"version {{ value: {VERSION} }} }} {body} }}"
        for signature_name, body in results
    )
    return text_format.Parse(text, inference_pb2.MultiInferenceResponse())


def run(model, request):
    servable, check_method_name = model
    return multi_inference(servable, request, check_method_name=check_method_name)


def run_error(model, request):
    with pytest.raises(ServingError) as info:
        run(model, request)
    return info.value


# ----------------------------------------------------------------------------- tests


def test_missing_input(model):
    """TFS: multi_inference_test.cc MissingInputTest"""
    error = run_error(model, make_request(("regress_x_to_y", REGRESS), x=None))
    assert error.code == "INVALID_ARGUMENT"
    assert "Input is empty" in error.message


def test_undefined_signature(model):
    """TFS: multi_inference_test.cc UndefinedSignatureTest"""
    error = run_error(model, make_request(("ThisSignatureDoesNotExist", REGRESS)))
    assert error.code == "INVALID_ARGUMENT"
    assert "signature not found" in error.message


def test_inconsistent_model_specs_in_request(model):
    """TFS: multi_inference_test.cc InconsistentModelSpecsInRequestTest"""
    request = make_request(("regress_x_to_y", REGRESS), ("regress_x_to_y", REGRESS))
    request.tasks[1].model_spec.name = "ModelDoesNotExist"
    error = run_error(model, request)
    assert error.code == "INVALID_ARGUMENT"
    assert "must access the same model name" in error.message


def test_evaluate_duplicate_signatures(model):
    """TFS: multi_inference_test.cc EvaluateDuplicateSignaturesTest"""
    request = make_request(("regress_x_to_y", REGRESS), ("regress_x_to_y", REGRESS))
    error = run_error(model, request)
    assert error.code == "INVALID_ARGUMENT"
    assert "Duplicate evaluation of signature: regress_x_to_y" in error.message


def test_unsupported_signature_type(model):
    """TFS: multi_inference_test.cc UsupportedSignatureTypeTest"""
    error = run_error(model, make_request(("serving_default", PREDICT)))
    assert error.code == "UNIMPLEMENTED"
    assert "Unsupported signature" in error.message


def test_valid_single_signature(model):
    """TFS: multi_inference_test.cc ValidSingleSignatureTest"""
    response = run(model, make_request(("regress_x_to_y", REGRESS)))
    assert response == expected(
        ("regress_x_to_y", "regression_result { regressions { value: 3 } }")
    )


def test_multiple_valid_regress_signatures(model):
    """TFS: multi_inference_test.cc MultipleValidRegressSignaturesTest"""
    request = make_request(("regress_x_to_y", REGRESS), ("regress_x_to_y2", REGRESS))
    response = run(model, request)
    assert response == expected(
        ("regress_x_to_y", "regression_result { regressions { value: 3 } }"),
        ("regress_x_to_y2", "regression_result { regressions { value: 4 } }"),
    )


def test_regress_and_classify_signatures(model):
    """TFS: multi_inference_test.cc RegressAndClassifySignaturesTest"""
    request = make_request(("regress_x_to_y", REGRESS), ("classify_x_to_y", CLASSIFY))
    response = run(model, request)
    assert response == expected(
        ("regress_x_to_y", "regression_result { regressions { value: 3 } }"),
        ("classify_x_to_y", "classification_result { classifications { classes { score: 3 } } }"),
    )


def test_empty_model_name_is_invalid_argument(model):
    """multi_inference.cc: every task must name its model."""
    request = make_request(("regress_x_to_y", REGRESS))
    request.tasks[0].model_spec.name = ""
    error = run_error(model, request)
    assert error.code == "INVALID_ARGUMENT"
    assert "Found ModelSpec with an empty model name." in error.message

