"""`kd.serving.export`: TF-Serving-ready SavedModels with Monte Carlo signatures.

Specification: DESIGN.md sections 4 ("Serving") and 6 ("TF Serving facts").

Every test exports a real Keras model into `tmp_path` and reads the result back
the way a server would: `tf.saved_model.load`, the SavedModel protos, or
`saved_model_cli` in a subprocess. Weights are seeded; the `mc` signature draws
a fresh seed per request, so its statistical checks compare with `predict_mc`
at five standard errors of the difference.
"""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

import keras

import keras_dropout as kd
from keras_dropout import uncertainty

pytestmark = [
    pytest.mark.tf_only,
    pytest.mark.skipif(
        keras.backend.backend() != "tensorflow", reason="serving needs the TensorFlow backend"
    ),
]

import tensorflow as tf  # noqa: E402  (after the backend guard's imports)
from tensorflow.python.saved_model import loader_impl  # noqa: E402

from keras_dropout.serving.check import check  # noqa: E402
from keras_dropout.serving.export import export  # noqa: E402
from keras_dropout.serving.warmup import read_warmup_requests  # noqa: E402

# The modules themselves (the package re-exports functions under the same names).
check_module = sys.modules["keras_dropout.serving.check"]
export_module = sys.modules["keras_dropout.serving.export"]

FEATURES = 4
NUM_SAMPLES = 32  # the `mc` signature's fixed sample count
MAX_SAMPLES = 64
SE_TOLERANCE = 5.0
REGRESSION_OUTPUTS = {"mean", "variance", "stddev"}
CLASSIFICATION_OUTPUTS = REGRESSION_OUTPUTS | {
    "predictive_entropy",
    "expected_entropy",
    "mutual_information",
    "variation_ratio",
}
MEASURES = {
    "mean": uncertainty.predictive_mean,
    "variance": uncertainty.predictive_variance,
    "stddev": lambda s: keras.ops.sqrt(uncertainty.predictive_variance(s)),
    "predictive_entropy": uncertainty.predictive_entropy,
    "expected_entropy": uncertainty.expected_entropy,
    "mutual_information": uncertainty.mutual_information,
    "variation_ratio": uncertainty.variation_ratio,
}


# --- Models -----------------------------------------------------------------


def _regression_model():
    """Dense -> BatchNormalization (far-off moving statistics) -> MCDropout -> Dense.

    The moving statistics are far from what a batch would give, so a
    BatchNormalization in training mode would change every output.
    """
    keras.utils.set_random_seed(1)
    inputs = keras.Input((FEATURES,), name="x")
    hidden = keras.layers.Dense(16, activation="relu", name="reg_dense_in")(inputs)
    hidden = keras.layers.BatchNormalization(name="reg_bn")(hidden)
    hidden = kd.layers.MCDropout(0.3, name="reg_dropout")(hidden)
    outputs = keras.layers.Dense(1, name="reg_out")(hidden)
    model = keras.Model(inputs, outputs, name="regressor")
    bn = model.get_layer("reg_bn")
    rng = np.random.default_rng(2)
    bn.gamma.assign(rng.uniform(0.5, 2.0, 16).astype("float32"))
    bn.beta.assign(rng.normal(size=16).astype("float32"))
    bn.moving_mean.assign(rng.uniform(2.0, 3.0, 16).astype("float32"))
    bn.moving_variance.assign(rng.uniform(0.1, 0.3, 16).astype("float32"))
    return model


def _classifier():
    keras.utils.set_random_seed(3)
    inputs = keras.Input((FEATURES,), name="features")
    hidden = keras.layers.Dense(16, activation="relu", name="cls_dense_in")(inputs)
    hidden = kd.layers.MCDropout(0.5, name="cls_dropout")(hidden)
    outputs = keras.layers.Dense(3, activation="softmax", name="cls_out")(hidden)
    return keras.Model(inputs, outputs, name="classifier")


def _multi_io_model():
    keras.utils.set_random_seed(4)
    a = keras.Input((3,), name="a")
    b = keras.Input((2,), name="b")
    hidden = keras.layers.Concatenate(name="joined")([a, b])
    hidden = kd.layers.MCDropout(0.3, name="multi_dropout")(hidden)
    value = keras.layers.Dense(1, name="value")(hidden)
    label = keras.layers.Dense(3, activation="softmax", name="label")(hidden)
    return keras.Model([a, b], [value, label], name="multi_io")


def _tiny_model():
    keras.utils.set_random_seed(5)
    return keras.Sequential(
        [keras.Input((2,), name="x"), kd.layers.MCDropout(0.5, name="tiny_dropout")], name="tiny"
    )


def _quick_export(model, base, **kwargs):
    """An export for tests of the folder logic: no warmup, no mc_sample (half the tracing)."""
    return export(model, base, warmup=False, batching=True, num_samples=2, max_samples=2, **kwargs)


def _hand_regression(model, x):
    """The regression model's deterministic output, BatchNormalization in inference mode."""
    dense_in, bn, out = (model.get_layer(n) for n in ("reg_dense_in", "reg_bn", "reg_out"))
    kernel, bias = (np.asarray(w) for w in dense_in.weights)
    hidden = np.maximum(x @ kernel + bias, 0.0)
    gamma, beta, mean, var = (np.asarray(w) for w in (bn.gamma, bn.beta, bn.moving_mean, bn.moving_variance))
    hidden = gamma * (hidden - mean) / np.sqrt(var + bn.epsilon) + beta
    kernel, bias = (np.asarray(w) for w in out.weights)
    return hidden @ kernel + bias


def _x(rows, features=FEATURES, seed=0):
    return np.random.default_rng(seed).normal(size=(rows, features)).astype("float32")


def _numpy(outputs):
    return {name: np.asarray(value) for name, value in outputs.items()}


def _mc_sample(loaded, num_samples, seed, **inputs):
    outputs = loaded.signatures["mc_sample"](
        num_samples=tf.constant(num_samples, tf.int32), seed=tf.constant(seed, tf.int64), **inputs
    )
    return _numpy(outputs)


class _Export:
    def __init__(self, model, path):
        self.model = model
        self.path = path
        self.loaded = tf.saved_model.load(path)


@pytest.fixture(scope="module")
def regression(tmp_path_factory):
    model = _regression_model()
    path = export(
        model, tmp_path_factory.mktemp("regression"), num_samples=NUM_SAMPLES, max_samples=MAX_SAMPLES
    )
    return _Export(model, path)


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    model = _classifier()
    path = export(
        model, tmp_path_factory.mktemp("classifier"), num_samples=NUM_SAMPLES, max_samples=MAX_SAMPLES
    )
    return _Export(model, path)


@pytest.fixture(scope="module")
def multi_io(tmp_path_factory):
    model = _multi_io_model()
    return _Export(model, export(model, tmp_path_factory.mktemp("multi_io"), num_samples=8))


@pytest.fixture(scope="module")
def batching(tmp_path_factory, regression):
    path = export(regression.model, tmp_path_factory.mktemp("batching"), num_samples=8, batching=True)
    return _Export(regression.model, path)


# --- saved_model_cli ----------------------------------------------------------


def _saved_model_cli(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    command = [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli", *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


class _CLI:
    """`show --all` of the classifier and `run` of the regressor's mc_sample.

    Both subprocesses start as soon as the exports exist and run while the
    other tests do: each pays for a TensorFlow import. In TF 2.21
    `--input_exprs` goes through `ast.literal_eval` (no `np.` calls), so the
    inputs are literals.
    """

    def __init__(self, regression, classifier):
        self.processes = {
            "show": _saved_model_cli("show", "--dir", classifier.path, "--all"),
            "run": _saved_model_cli(
                "run",
                "--dir",
                regression.path,
                "--tag_set",
                "serve",
                "--signature_def",
                "mc_sample",
                "--input_exprs",
                f"x={[[1.0] * FEATURES] * 2};num_samples=8;seed=1",
            ),
        }
        self.outputs = {}

    def __getitem__(self, name):
        if name not in self.outputs:
            process = self.processes[name]
            stdout, stderr = process.communicate(timeout=180)
            assert process.returncode == 0, f"saved_model_cli {name} failed:\n{stderr[-3000:]}"
            self.outputs[name] = stdout
        return self.outputs[name]

    def close(self):
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.communicate()


@pytest.fixture(scope="module", autouse=True)
def cli(request):
    if not any(item.name.startswith("test_saved_model_cli") for item in request.session.items):
        yield None  # deselected: no exports, no subprocesses
        return
    started = _CLI(request.getfixturevalue("regression"), request.getfixturevalue("classifier"))
    yield started
    started.close()


def _cli_signatures(show_output):
    """{signature: ({input: (dtype, shape)}, {output: (dtype, shape)})} from `show --all`."""
    pattern = r"(inputs|outputs)\['(\w+)'\] tensor_info:\s+dtype: (\w+)\s+shape: ([^\n]+)"
    signatures = {}
    blocks = re.split(r"signature_def\['(\w+)'\]:", show_output.split("Concrete Functions")[0])
    for name, block in zip(blocks[1::2], blocks[2::2]):
        found = ({}, {})
        for kind, key, dtype, shape in re.findall(pattern, block):
            found[kind == "outputs"][key] = (dtype, shape.strip())
        signatures[name] = found
    return signatures


def test_signatures_have_documented_inputs_and_outputs(regression):
    signatures = regression.loaded.signatures
    assert set(signatures) == {"serving_default", "mc", "mc_sample"}
    for name, extra in (("serving_default", {}), ("mc", {}), ("mc_sample", {"num_samples", "seed"})):
        inputs = signatures[name].structured_input_signature[1]
        assert set(inputs) == {"x"} | set(extra), name
        assert inputs["x"].shape.as_list() == [None, FEATURES]
    sample_inputs = signatures["mc_sample"].structured_input_signature[1]
    assert (sample_inputs["num_samples"].dtype, sample_inputs["num_samples"].shape.rank) == (tf.int32, 0)
    assert (sample_inputs["seed"].dtype, sample_inputs["seed"].shape.rank) == (tf.int64, 0)
    assert set(signatures["serving_default"].structured_outputs) == {"reg_out"}
    assert set(signatures["mc"].structured_outputs) == REGRESSION_OUTPUTS
    assert set(signatures["mc_sample"].structured_outputs) == REGRESSION_OUTPUTS


# --- Versions and atomic writes -------------------------------------------------


def _listing(base):
    return sorted(os.listdir(base))


def test_versions_count_up_from_one_through_a_hidden_staging_folder(tmp_path, monkeypatch):
    base = tmp_path / "tiny"
    renames = []
    real_rename = os.rename

    def recording_rename(source, destination):
        renames.append((source, destination))
        return real_rename(source, destination)

    monkeypatch.setattr(export_module.os, "rename", recording_rename)
    model = _tiny_model()
    first = _quick_export(model, base)
    second = _quick_export(model, base)
    assert (first, second) == (str(base / "1"), str(base / "2"))
    assert _listing(base) == ["1", "2"]  # no staging leftovers
    for (source, destination), path in zip(renames, (first, second)):
        assert destination == path
        assert os.path.dirname(source) == str(base)  # same filesystem: rename is atomic
        assert os.path.basename(source).startswith(".")  # servers skip it


def test_explicit_version_is_honoured_and_default_follows_the_largest(tmp_path):
    base = tmp_path / "tiny"
    for entry in ("5", "foo", ".hidden", "12abc"):
        (base / entry).mkdir(parents=True)
    model = _tiny_model()
    assert _quick_export(model, base, version=3) == str(base / "3")
    assert _quick_export(model, base) == str(base / "6")
    assert _listing(base) == [".hidden", "12abc", "3", "5", "6", "foo"]
    assert os.path.exists(base / "3" / "saved_model.pb")


def test_an_existing_version_is_refused(tmp_path):
    base = tmp_path / "tiny"
    (base / "1").mkdir(parents=True)
    (base / "1" / "marker").write_text("old")
    with pytest.raises(ValueError, match="already exists"):
        _quick_export(_tiny_model(), base, version=1)
    assert _listing(base) == ["1"]
    assert _listing(base / "1") == ["marker"]


def test_a_failed_export_leaves_no_version_and_no_staging_folder(tmp_path, monkeypatch):
    base = tmp_path / "tiny"
    (base / "1").mkdir(parents=True)

    def failing_rename(source, destination):
        assert os.path.exists(os.path.join(source, "saved_model.pb"))  # fully written first
        raise OSError("disk gone")

    monkeypatch.setattr(export_module.os, "rename", failing_rename)
    with pytest.raises(OSError, match="disk gone"):
        _quick_export(_tiny_model(), base)
    assert _listing(base) == ["1"]


def test_a_model_failing_during_tracing_writes_nothing(tmp_path):
    class Fragile(keras.layers.Layer):
        fail = False

        def call(self, x):
            if self.fail:
                raise RuntimeError("broken layer")
            return x

    model = _tiny_model()
    fragile = Fragile(name="fragile")
    model.add(fragile)
    fragile.fail = True
    with pytest.raises(RuntimeError, match="broken layer"):
        _quick_export(model, tmp_path / "tiny")
    assert not os.path.exists(tmp_path / "tiny") or _listing(tmp_path / "tiny") == []


# --- serving_default -------------------------------------------------------------


def test_serving_default_equals_predict_with_batchnorm_in_inference_mode(regression):
    x = _x(6)
    served = regression.loaded.signatures["serving_default"](x=x)["reg_out"].numpy()
    np.testing.assert_allclose(served, regression.model.predict(x, verbose=0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(served, _hand_regression(regression.model, x), rtol=1e-4, atol=1e-4)


def test_serving_default_stays_deterministic_when_exported_inside_sampling(tmp_path, regression):
    model = regression.model
    x = _x(6)
    with kd.sampling(seed=0):
        sampled = model.predict(x, verbose=0)
        path = _quick_export(model, tmp_path / "sampling")
    expected = model.predict(x, verbose=0)
    assert not np.allclose(sampled, expected)  # the switch was on during export
    serving_default = tf.saved_model.load(path).signatures["serving_default"]
    first = serving_default(x=x)["reg_out"].numpy()
    second = serving_default(x=x)["reg_out"].numpy()
    np.testing.assert_array_equal(first, second)
    np.testing.assert_allclose(first, expected, rtol=1e-5, atol=1e-5)


# --- mc and mc_sample -----------------------------------------------------------


def _assert_matches_predict_mc(served, model, distinct_rows, copies):
    """Served `mc` statistics against the same statistics of `predict_mc` samples.

    `served` holds `copies` independent requests' worth of statistics per
    distinct row (rows repeated). The reference groups `predict_mc`'s samples
    of each row in `NUM_SAMPLES`, so both sides have the same finite-sample
    bias (ddof=0 variance, entropy of an estimated mean); the comparison is of
    their means over groups, at `SE_TOLERANCE` standard errors.
    """
    groups = 256
    reference = kd.predict_mc(
        model, distinct_rows, num_samples=NUM_SAMPLES * groups, seed=0, return_samples=True
    )
    rows = len(reference.samples)
    grouped = reference.samples.reshape((rows * groups, NUM_SAMPLES) + reference.samples.shape[2:])
    for name, values in served.items():
        expected = np.asarray(MEASURES[name](grouped)).reshape((rows, groups) + values.shape[1:])
        actual = values.reshape((rows, copies) + values.shape[1:])
        difference = actual.mean(1) - expected.mean(1)
        se = np.sqrt(actual.var(1, ddof=1) / copies + expected.var(1, ddof=1) / groups)
        assert np.all(np.abs(difference) <= SE_TOLERANCE * se + 1e-6), (name, difference, se)


@pytest.mark.parametrize("fixture", ["regression", "classifier"])
def test_mc_matches_predict_mc_in_distribution(fixture, request):
    exported = request.getfixturevalue(fixture)
    input_name = exported.model.inputs[0].name
    distinct_rows, copies = _x(3, seed=7), 256
    served = _numpy(
        exported.loaded.signatures["mc"](**{input_name: np.repeat(distinct_rows, copies, axis=0)})
    )
    expected = REGRESSION_OUTPUTS if fixture == "regression" else CLASSIFICATION_OUTPUTS
    assert set(served) == expected
    assert all(value.shape[0] == 3 * copies for value in served.values())  # batch-major
    assert served["variance"].min() >= 0 and served["variance"].mean() > 0
    _assert_matches_predict_mc(served, exported.model, distinct_rows, copies)


def test_mc_draws_fresh_masks_per_request(regression):
    x = _x(4)
    first = regression.loaded.signatures["mc"](x=x)["mean"].numpy()
    second = regression.loaded.signatures["mc"](x=x)["mean"].numpy()
    assert not np.array_equal(first, second)


def test_mc_sample_same_seed_same_answer(classifier):
    x = _x(5)
    first = _mc_sample(classifier.loaded, 16, 123, features=x)
    second = _mc_sample(classifier.loaded, 16, 123, features=x)
    other = _mc_sample(classifier.loaded, 16, 124, features=x)
    for name in CLASSIFICATION_OUTPUTS:
        np.testing.assert_array_equal(first[name], second[name])
    assert not np.array_equal(first["mean"], other["mean"])


def test_mc_sample_with_zero_samples_is_the_deterministic_pass(regression, classifier):
    x = _x(5)
    served = _mc_sample(regression.loaded, 0, 0, x=x)
    np.testing.assert_allclose(served["mean"], _hand_regression(regression.model, x), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(served["variance"], 0.0)
    np.testing.assert_array_equal(served["stddev"], 0.0)
    served = _mc_sample(classifier.loaded, 0, 0, features=x)
    np.testing.assert_allclose(served["mean"], classifier.model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(served["variance"], 0.0)
    np.testing.assert_allclose(served["mutual_information"], 0.0, atol=1e-5)
    np.testing.assert_allclose(served["variation_ratio"], 0.0, atol=1e-6)


@pytest.mark.parametrize("num_samples", [MAX_SAMPLES + 1, -1])
def test_mc_sample_out_of_range_num_samples_is_invalid_argument(regression, num_samples):
    with pytest.raises(tf.errors.InvalidArgumentError, match="num_samples"):
        _mc_sample(regression.loaded, num_samples, 0, x=_x(2))


def test_mc_sample_accepts_max_samples(regression):
    served = _mc_sample(regression.loaded, MAX_SAMPLES, 0, x=_x(2))
    assert served["mean"].shape == (2, 1)


def test_mc_sample_row_does_not_depend_on_the_rest_of_the_batch(regression):
    """BatchNormalization in training mode would normalize with the batch's statistics."""
    x = _x(6)
    alone = _mc_sample(regression.loaded, 16, 9, x=x[:1])
    batched = _mc_sample(regression.loaded, 16, 9, x=x)
    for name in REGRESSION_OUTPUTS:
        np.testing.assert_allclose(alone[name][0], batched[name][0], rtol=1e-5, atol=1e-6)


def test_signatures_write_no_variable(regression):
    loaded = regression.loaded
    names = [variable.name for variable in loaded.variables]
    assert any("moving_mean" in name for name in names) and any("sampling_state" in name for name in names)
    before = [variable.numpy().copy() for variable in loaded.variables]
    x = _x(4)
    loaded.signatures["serving_default"](x=x)
    loaded.signatures["mc"](x=x)
    _mc_sample(loaded, 8, 1, x=x)
    _mc_sample(loaded, 0, 1, x=x)
    for variable, value in zip(loaded.variables, before):
        np.testing.assert_array_equal(variable.numpy(), value, err_msg=variable.name)


# --- What TF Serving needs -------------------------------------------------------------


def test_check_finds_nothing_in_the_exports(regression, classifier, multi_io):
    for exported in (regression, classifier, multi_io):
        assert check(exported.path) == []


def test_no_variable_write_and_no_xla_reachable_from_any_signature(regression, classifier):
    for exported in (regression, classifier):
        (meta_graph,) = loader_impl.parse_saved_model(exported.path).meta_graphs
        for name in ("serving_default", "mc", "mc_sample"):
            found, _ = check_module._reachable_ops(meta_graph, meta_graph.signature_def[name])
            ops = {op for op, _, _ in found}
            assert "StatefulPartitionedCall" in ops or "PartitionedCall" in ops  # the walk went in
            assert not {op for op in ops if op.startswith("Assign") or op == "<XLA>"}, (name, ops)
        for function in meta_graph.graph_def.library.function:
            assert not function.attr["_XlaMustCompile"].b, function.signature.name
            for node in function.node_def:
                assert not node.attr["_XlaMustCompile"].b, node.name


def test_multi_input_multi_output_names(multi_io):
    signatures = multi_io.loaded.signatures
    for name in ("serving_default", "mc", "mc_sample"):
        assert {"a", "b"} <= set(signatures[name].structured_input_signature[1]), name
    assert set(signatures["serving_default"].structured_outputs) == {"value", "label"}
    expected = {f"value_{key}" for key in REGRESSION_OUTPUTS} | {
        f"label_{key}" for key in CLASSIFICATION_OUTPUTS
    }
    assert set(signatures["mc"].structured_outputs) == expected
    a, b = _x(3, 3), _x(3, 2, seed=1)
    served = _numpy(signatures["mc"](a=a, b=b))
    assert set(served) == expected
    assert served["value_mean"].shape == (3, 1) and served["label_mean"].shape == (3, 3)
    deterministic = _numpy(signatures["serving_default"](a=a, b=b))
    predicted = multi_io.model.predict([a, b], verbose=0)
    np.testing.assert_allclose(deterministic["value"], predicted[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(deterministic["label"], predicted[1], rtol=1e-5, atol=1e-6)


def test_batching_export_has_no_mc_sample_and_passes_the_batching_check(batching, regression):
    assert set(batching.loaded.signatures) == {"serving_default", "mc"}
    assert check(batching.path, batching=True) == []
    problems = check(regression.path, batching=True)
    assert len(problems) == 2, problems
    for input_name, problem in zip(("num_samples", "seed"), sorted(problems)):
        assert "'mc_sample'" in problem and f"'{input_name}'" in problem and "scalar" in problem


@pytest.mark.parametrize("fixture", ["regression", "batching"])
def test_warmup_requests_replay_against_the_export(fixture, request):
    exported = request.getfixturevalue(fixture)
    logs = read_warmup_requests(exported.path)
    signatures = exported.loaded.signatures
    names = [log.predict_log.request.model_spec.signature_name for log in logs]
    assert sorted(names) == sorted(signatures)  # one request per signature
    for log in logs:
        request_proto = log.predict_log.request
        inputs = {key: tf.constant(tf.make_ndarray(value)) for key, value in request_proto.inputs.items()}
        signature = signatures[request_proto.model_spec.signature_name]
        outputs = signature(**inputs)
        assert set(outputs) == set(signature.structured_outputs)
        assert all(value.shape[0] == 1 for value in outputs.values())


def test_stock_keras_dropout_model_is_converted(tmp_path):
    keras.utils.set_random_seed(6)
    model = keras.Sequential(
        [
            keras.Input((FEATURES,), name="x"),
            keras.layers.Dense(8, name="stock_dense"),
            keras.layers.Dropout(0.5, name="stock_dropout"),
            keras.layers.Dense(1, name="stock_out"),
        ]
    )
    path = export(model, tmp_path / "stock", num_samples=16, warmup=False, batching=True)
    loaded = tf.saved_model.load(path)
    x = _x(4)
    assert float(loaded.signatures["mc"](x=x)["variance"].numpy().min()) > 0
    np.testing.assert_allclose(
        loaded.signatures["serving_default"](x=x)["stock_out"].numpy(),
        model.predict(x, verbose=0),
        rtol=1e-5,
        atol=1e-6,
    )


def test_string_input_model_gets_a_replayable_warmup(tmp_path):
    vectorize = keras.layers.TextVectorization(max_tokens=10, output_sequence_length=3, name="vectorize")
    vectorize.adapt(["red green", "green blue"])
    keras.utils.set_random_seed(8)
    text = keras.Input((1,), dtype="string", name="text")
    hidden = keras.layers.Flatten()(keras.layers.Embedding(10, 2, name="embed")(vectorize(text)))
    hidden = kd.layers.MCDropout(0.5, name="text_dropout")(hidden)
    model = keras.Model(text, keras.layers.Dense(1, name="text_out")(hidden))
    path = export(model, tmp_path / "text", num_samples=4, batching=True)
    assert check(path) == []
    served = tf.saved_model.load(path).signatures["mc"](text=tf.constant([["red blue"], ["green"]]))
    assert served["mean"].shape == (2, 1)


# --- Bad input ------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_samples": MAX_SAMPLES + 1, "max_samples": MAX_SAMPLES}, "max_samples"),
        ({"num_samples": 0}, "num_samples"),
        ({"version": -1}, "version"),
        ({"task": "regresion"}, "task"),
    ],
)
def test_bad_arguments_are_refused(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        export(_tiny_model(), tmp_path / "bad", warmup=False, batching=True, **kwargs)
    assert not os.path.exists(tmp_path / "bad") or _listing(tmp_path / "bad") == []


def test_a_model_without_stochastic_layers_is_refused(tmp_path):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match="has nothing that samples"):
        export(model, tmp_path / "bad")
    assert not os.path.exists(tmp_path / "bad")


# --- saved_model_cli (collected last: the subprocesses ran meanwhile) ---------------


def test_saved_model_cli_show_lists_the_three_signatures(cli):
    signatures = _cli_signatures(cli["show"])
    assert {"serving_default", "mc", "mc_sample"} <= set(signatures)
    features = {"features": ("DT_FLOAT", f"(-1, {FEATURES})")}
    assert signatures["serving_default"] == (features, {"cls_out": ("DT_FLOAT", "(-1, 3)")})
    mc_inputs, mc_outputs = signatures["mc"]
    assert mc_inputs == features
    assert set(mc_outputs) == CLASSIFICATION_OUTPUTS
    assert all(shape.startswith("(-1") for _, shape in mc_outputs.values()), mc_outputs
    sample_inputs, sample_outputs = signatures["mc_sample"]
    assert sample_inputs == {
        **features,
        "num_samples": ("DT_INT32", "()"),
        "seed": ("DT_INT64", "()"),
    }
    assert sample_outputs == mc_outputs
    assert "Method name is: tensorflow/serving/predict" in cli["show"]


def test_saved_model_cli_run_calls_mc_sample(cli, regression):
    printed = {}
    for key, values in re.findall(r"Result for output key (\w+):\n([^A-Za-z]+)", cli["run"]):
        printed[key] = np.array(re.findall(r"[-+0-9.eE]+", values), dtype="float32").reshape(2, 1)
    assert set(printed) == REGRESSION_OUTPUTS
    # Same seed, same answer: in this process as in the CLI's.
    expected = _mc_sample(regression.loaded, 8, 1, x=np.ones((2, FEATURES), "float32"))
    for key in REGRESSION_OUTPUTS:
        np.testing.assert_allclose(printed[key], expected[key], rtol=1e-5, atol=1e-6)
