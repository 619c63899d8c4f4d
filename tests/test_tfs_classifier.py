"""TF Serving's `servables/tensorflow/classifier_test.cc`, ported to `inference.classify`.

TF Serving's test runs the classifier on a fake Session that copies each Example's "class"
(bytes) and "score" (float) features into the classes and scores outputs, and on a mock Session
that returns fixed tensors (wrong batch size, wrong dtype, mismatched class counts). Here both are
real SavedModels: a TF1 graph (`save_fake_classifier`) whose signatures parse those features
with `tf.io.parse_example`, and whose "mock" signatures return constants of the shapes and
dtypes the mock returned. Each TF Serving test runs twice there, with the method_name check on
and off (`INSTANTIATE_TEST_SUITE_P(..., ::testing::Bool())`); here the `check_method_name`
fixture does the same. TF Serving calls both `Classify` and `RunClassify` in each test, the same
code path; `inference.classify` is that one path.

`save_graph_model` and `example` are shared with `test_tfs_regressor.py`.

Not ported:
- The expected RunOptions timeout (42 ms) the fake Session checks: a C++ Session argument with
  no equivalent in `Servable.run`.
"""

import pytest

tf = pytest.importorskip("tensorflow")
pytest.importorskip("tensorflow_serving")

from google.protobuf import text_format  # noqa: E402
from tensorflow_serving.apis import classification_pb2  # noqa: E402

import tfs_models  # noqa: E402
from keras_dropout.serving.errors import ServingError  # noqa: E402
from keras_dropout.serving.inference import classify  # noqa: E402
from keras_dropout.serving.servables import load_servable  # noqa: E402

pytestmark = pytest.mark.tf_only

tf1 = tf.compat.v1
CLASSIFY = tf.saved_model.CLASSIFY_METHOD_NAME
REGRESS = tf.saved_model.REGRESS_METHOD_NAME
MODEL = "test_model"
VERSION = 1


# ----------------------------------------------------------------------------- shared helpers


def save_graph_model(path, build):
    """Writes a TF1-graph SavedModel whose signatures all read serialized Examples.

    Args:
        path: the SavedModel directory to write.
        build: `build(examples) -> {signature_name: (outputs, method_name)}`, called inside the
            graph with `examples`, the string [None] placeholder, which every signature takes as
            its one input "inputs". `outputs` maps output aliases to tensors; empty, it makes an
            empty SignatureDef (no inputs either). `method_name` None sets none.

    Returns:
        `path`.
    """
    info = tf1.saved_model.utils.build_tensor_info
    with tf.Graph().as_default(), tf1.Session() as session:
        examples = tf1.placeholder(tf.string, [None], name="input")
        signatures = {}
        for name, (outputs, method_name) in build(examples).items():
            signatures[name] = tf1.saved_model.signature_def_utils.build_signature_def(
                inputs={"inputs": info(examples)} if outputs else {},
                outputs={alias: info(tensor) for alias, tensor in outputs.items()},
                method_name=method_name,
            )
        builder = tf1.saved_model.Builder(path)
        builder.add_meta_graph_and_variables(session, ["serve"], signature_def_map=signatures)
        builder.save()
    return path


def example(**features):
    """A `tf.train.Example`: a str / list of str is a bytes feature, anything else floats."""
    example = tf.train.Example()
    for name, values in features.items():
        values = values if isinstance(values, list) else [values]
        feature = example.features.feature[name]
        if values and isinstance(values[0], str):
            feature.bytes_list.value.extend(value.encode() for value in values)
        else:
            feature.float_list.value.extend(values)
    return example


def constant(shape, dtype):
    """Zeros (empty strings for tf.string) of a fixed shape, as a mock Session returns."""
    return tf.fill(shape, "") if dtype == tf.string else tf.zeros(shape, dtype)


def failing(tensor, message):
    """`tensor`, once an always-false assertion carrying `message` has run."""
    with tf.control_dependencies([tf1.Assert(False, [message])]):
        return tf.identity(tensor)


# ----------------------------------------------------------------------------- models


def _classifier_signatures(examples):
    parsed = tf1.io.parse_example(
        examples,
        {"class": tf1.io.VarLenFeature(tf.string), "score": tf1.io.VarLenFeature(tf.float32)},
    )
    classes = tf.sparse.to_dense(parsed["class"], default_value="")
    scores = tf.sparse.to_dense(parsed["score"])
    rank_3_scores = tf.zeros(tf.concat([tf.shape(scores), [10]], axis=0))

    def mocked(classes_shape, classes_dtype, scores_shape, scores_dtype):
        # The mock Session's fixed outputs, whatever the examples.
        return {
            "classes": constant(classes_shape, classes_dtype),
            "scores": constant(scores_shape, scores_dtype),
        }

    both = {"classes": classes, "scores": scores}
    return {
        "serving_default": (both, CLASSIFY),
        "output_plus_one": ({"classes": classes, "scores": scores + 1}, CLASSIFY),
        "invalid_regression_signature": ({"outputs": scores + 1}, REGRESS),
        "ImproperlySizedScoresSignature": ({"classes": classes, "scores": rank_3_scores}, CLASSIFY),
        "classes_only": ({"classes": classes}, CLASSIFY),
        "scores_only": ({"scores": scores}, CLASSIFY),
        "empty": ({}, None),
        "run_fails": ({"scores": failing(scores, "Run totally failed")}, CLASSIFY),
        "classes_batch_1": (mocked([1, 2], tf.string, [2, 2], tf.float32), CLASSIFY),
        "classes_float": (mocked([2, 2], tf.float32, [2, 2], tf.float32), CLASSIFY),
        "scores_batch_1": (mocked([2, 2], tf.string, [1, 2], tf.float32), CLASSIFY),
        "scores_string": (mocked([2, 2], tf.string, [2, 2], tf.string), CLASSIFY),
        "three_scores_two_classes": (mocked([2, 2], tf.string, [2, 3], tf.float32), CLASSIFY),
        "unsupported_method": (both, "not/supported/method"),
        "no_method": (both, None),
    }


def save_fake_classifier(path):
    """The fake/mock Sessions of classifier_test.cc as one SavedModel (see the module doc).

    Signatures (input "inputs", serialized Examples with bytes "class" and float "score"):
    serving_default (classes, scores), output_plus_one (scores + 1),
    invalid_regression_signature (a regression one), ImproperlySizedScoresSignature (rank-3
    scores), classes_only, scores_only, empty (an empty SignatureDef), run_fails (an assertion
    "Run totally failed"), the mock ones classes_batch_1, classes_float, scores_batch_1,
    scores_string, three_scores_two_classes, and unsupported_method / no_method
    (method_name "not/supported/method" / none).
    """
    return save_graph_model(path, _classifier_signatures)


@pytest.fixture(scope="module")
def servable(tmp_path_factory):
    path = save_fake_classifier(str(tmp_path_factory.mktemp("fake_classifier") / "1"))
    return load_servable(MODEL, VERSION, path)


@pytest.fixture(scope="module")
def half_plus_two(tmp_path_factory):
    path = tfs_models.save_half_plus_two(str(tmp_path_factory.mktemp("half_plus_two") / "1"))
    return load_servable(MODEL, VERSION, path)


@pytest.fixture(params=[True, False], ids=["method_check", "no_method_check"])
def check_method_name(request):
    return request.param


# ----------------------------------------------------------------------------- helpers


def class_scores(*pairs):
    """TF Serving's `example({{"dos", 2}, {"uno", 1}})`: "class" and "score" features."""
    return example(**{"class": [label for label, _ in pairs], "score": [s for _, s in pairs]})


def make_request(signature_name="", examples=(), context=None):
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = MODEL
    request.model_spec.signature_name = signature_name
    if context is None:
        request.input.example_list.examples.extend(examples)
    else:
        with_context = request.input.example_list_with_context
        with_context.context.CopyFrom(context)
        with_context.examples.extend(examples)
    return request


TWO_EXAMPLES = (class_scores(("dos", 2), ("uno", 1)), class_scores(("cuatro", 4), ("tres", 3)))


def result(*classifications):
    """A ClassificationResult, one text-format `Classifications` body per argument."""
    text = "".join(f"classifications {{ {body} }}" for body in classifications)
    return text_format.Parse(text, classification_pb2.ClassificationResult())


def classify_error(servable, request, check_method_name):
    with pytest.raises(ServingError) as info:
        classify(servable, request, check_method_name=check_method_name)
    return info.value


# ----------------------------------------------------------------------------- tests


def test_example_list(servable, check_method_name):
    """TFS: classifier_test.cc ExampleList"""
    request = make_request(examples=TWO_EXAMPLES)
    response = classify(servable, request, check_method_name=check_method_name)
    assert response.result == result(
        "classes { label: 'dos' score: 2 } classes { label: 'uno' score: 1 }",
        "classes { label: 'cuatro' score: 4 } classes { label: 'tres' score: 3 }",
    )


def test_example_list_with_context(servable, check_method_name):
    """TFS: classifier_test.cc ExampleListWithContext"""
    empty = tf.train.Example()
    request = make_request(examples=[empty, empty], context=class_scores(("dos", 2), ("uno", 1)))
    response = classify(servable, request, check_method_name=check_method_name)
    one = "classes { label: 'dos' score: 2 } classes { label: 'uno' score: 1 }"
    assert response.result == result(one, one)


def test_example_list_with_context_duplicate_features(servable, check_method_name):
    """TFS: classifier_test.cc ExampleListWithContext_DuplicateFeatures"""
    request = make_request(
        examples=[tf.train.Example(), class_scores(("tres", 3), ("cuatro", 4))],
        context=class_scores(("uno", 1), ("dos", 2)),
    )
    response = classify(servable, request, check_method_name=check_method_name)
    assert response.result == result(
        "classes { label: 'uno' score: 1 } classes { label: 'dos' score: 2 }",
        "classes { label: 'tres' score: 3 } classes { label: 'cuatro' score: 4 }",
    )


def test_classes_only(servable, check_method_name):
    """TFS: classifier_test.cc ClassesOnly"""
    request = make_request("classes_only", TWO_EXAMPLES)
    response = classify(servable, request, check_method_name=check_method_name)
    assert response.result == result(
        "classes { label: 'dos' } classes { label: 'uno' }",
        "classes { label: 'cuatro' } classes { label: 'tres' }",
    )


def test_scores_only(servable, check_method_name):
    """TFS: classifier_test.cc ScoresOnly"""
    request = make_request("scores_only", TWO_EXAMPLES)
    response = classify(servable, request, check_method_name=check_method_name)
    assert response.result == result(
        "classes { score: 2 } classes { score: 1 }",
        "classes { score: 4 } classes { score: 3 }",
    )


def test_zero_scores_are_present(servable, check_method_name):
    """TFS: classifier_test.cc ZeroScoresArePresent"""
    request = make_request("scores_only", [class_scores(("minus", -1), ("zero", 0), ("one", 1))])
    response = classify(servable, request, check_method_name=check_method_name)
    assert len(response.result.classifications) == 1
    classes = response.result.classifications[0].classes
    assert [entry.score for entry in classes] == pytest.approx([-1, 0, 1], abs=1e-7)


def test_valid_named_signature(servable, check_method_name):
    """TFS: classifier_test.cc ValidNamedSignature"""
    request = make_request("output_plus_one", TWO_EXAMPLES)
    response = classify(servable, request, check_method_name=check_method_name)
    assert response.result == result(
        "classes { label: 'dos' score: 3 } classes { label: 'uno' score: 2 }",
        "classes { label: 'cuatro' score: 5 } classes { label: 'tres' score: 4 }",
    )


@pytest.mark.parametrize(
    "signature_name",
    [
        pytest.param("invalid_regression_signature", id="InvalidNamedSignature"),
        pytest.param("ImproperlySizedScoresSignature", id="MalformedScores"),
        pytest.param("empty", id="MissingClassificationSignature"),
    ],
)
def test_signature_that_cannot_classify_is_invalid_argument(
    servable, check_method_name, signature_name
):
    """TFS: classifier_test.cc InvalidNamedSignature, MalformedScores,
    MissingClassificationSignature"""
    request = make_request(signature_name, TWO_EXAMPLES)
    assert classify_error(servable, request, check_method_name).code == "INVALID_ARGUMENT"


def test_malformed_scores_names_the_shape(servable):
    """The shape check's message, with TF Serving's shape notation (classifier.cc)."""
    request = make_request("ImproperlySizedScoresSignature", TWO_EXAMPLES)
    error = classify_error(servable, request, False)
    assert "Expected Tensor shape: [batch_size num_classes] but got [2,2,10]" in error.message


def test_unknown_signature_is_invalid_argument(servable):
    """classifier.cc GetClassificationSignatureDef: an unknown name is INVALID_ARGUMENT."""
    error = classify_error(servable, make_request("no_such_signature", TWO_EXAMPLES), False)
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
    """TFS: classifier_test.cc EmptyInput, EmptyExampleList, EmptyExampleListWithContext"""
    request = make_request()
    request.input.Clear()
    if input_kind == "example_list":
        request.input.example_list.SetInParent()
    elif input_kind == "example_list_with_context":
        request.input.example_list_with_context.context.CopyFrom(class_scores(("dos", 2)))
    error = classify_error(servable, request, check_method_name)
    assert error.code == "INVALID_ARGUMENT"
    assert "Input is empty" in error.message


def test_runs_fails(servable, check_method_name):
    """TFS: classifier_test.cc RunsFails"""
    request = make_request("run_fails", [class_scores(("dos", 2))])
    assert "Run totally failed" in str(classify_error(servable, request, check_method_name))


@pytest.mark.parametrize(
    "signature_name, message",
    [
        pytest.param("classes_batch_1", "batch size", id="ClassesIncorrectTensorBatchSize"),
        pytest.param(
            "classes_float", "Expected classes Tensor of DT_STRING", id="ClassesIncorrectTensorType"
        ),
        pytest.param("scores_batch_1", "batch size", id="ScoresIncorrectTensorBatchSize"),
        pytest.param(
            "scores_string", "Expected scores Tensor of DT_FLOAT", id="ScoresIncorrectTensorType"
        ),
        pytest.param(
            "three_scores_two_classes",
            "Tensors class and score should match in dim_size(1). Got 2 vs. 3",
            id="MismatchedNumberOfTensorClasses",
        ),
    ],
)
def test_bad_outputs(servable, check_method_name, signature_name, message):
    """TFS: classifier_test.cc ClassesIncorrectTensorBatchSize, ClassesIncorrectTensorType,
    ScoresIncorrectTensorBatchSize, ScoresIncorrectTensorType, MismatchedNumberOfTensorClasses"""
    error = classify_error(servable, make_request(signature_name, TWO_EXAMPLES), check_method_name)
    assert error.code == "INVALID_ARGUMENT"
    assert message in str(error)


def test_method_name_check(servable, check_method_name):
    """TFS: classifier_test.cc MethodNameCheck"""
    examples = TWO_EXAMPLES[:1]
    request = make_request("serving_default", examples)
    classify(servable, request, check_method_name=check_method_name)
    for signature_name in ("unsupported_method", "no_method"):
        request = make_request(signature_name, examples)
        if check_method_name:
            error = classify_error(servable, request, check_method_name)
            assert error.code == "INVALID_ARGUMENT"
            assert "Expected classification signature method_name to be" in error.message
        else:
            classify(servable, request, check_method_name=check_method_name)


def test_response_names_model_version_and_signature(servable):
    """util.cc MakeModelSpec, as RunClassify fills the response: "" is serving_default."""
    response = classify(servable, make_request("", TWO_EXAMPLES))
    assert response.model_spec.name == MODEL
    assert response.model_spec.signature_name == "serving_default"
    assert response.model_spec.version.value == VERSION


def test_half_plus_two_classify_x_to_y(half_plus_two, check_method_name):
    """TF Serving's half_plus_two: classify_x_to_y scores y = 0.5 * x + 2 (x = 2 -> 3)."""
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = MODEL
    request.model_spec.signature_name = "classify_x_to_y"
    request.input.example_list.examples.append(tfs_models.example(x=2.0))
    response = classify(half_plus_two, request, check_method_name=check_method_name)
    assert response.result == result("classes { score: 3 }")
