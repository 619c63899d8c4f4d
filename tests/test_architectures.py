"""MC dropout on the models people bring: keras_hub, keras.applications, RNNs, strings.

Specification: DESIGN.md section 3 ("every stochastic regulariser samples",
seeds) and section 4 ("every model predict_mc accepts exports"). Models are
tiny configurations with random weights (`tiny_models`); exports are checked
with `kd.serving.check`, loaded back with `tf.saved_model.load` and, for a
keras_hub task with dict inputs, served by the embedded server over REST.
"""


import numpy as np
import pytest

import keras

import keras_dropout as kd
from keras_dropout import mc

pytestmark = [
    pytest.mark.tf_only,
    pytest.mark.skipif(
        keras.backend.backend() != "tensorflow", reason="exports need the TensorFlow backend"
    ),
]

import tensorflow as tf  # noqa: E402

import tiny_models  # noqa: E402
from keras_dropout.serving.check import check  # noqa: E402
from keras_dropout.serving.export import export  # noqa: E402

S = 8


def _signature(path, name):
    return tf.saved_model.load(path).signatures[name]


def _call(signature, inputs, **extra):
    feed = {name: tf.constant(value) for name, value in inputs.items()}
    feed.update({name: tf.constant(value) for name, value in extra.items()})
    return {name: value.numpy() for name, value in signature(**feed).items()}


@pytest.fixture(scope="module")
def bert():
    return tiny_models.bert_classifier(head_dropout=0.0, backbone_dropout=0.1)


def test_bert_classifier_variance_comes_from_the_backbone_alone(bert):
    model, inputs = bert
    sites = kd.stochastic_sites(model)
    head = [s for s in sites if s.path.endswith("classifier_dropout")]
    assert head and not head[0].sampled  # rate 0: the variance must come from inside
    assert {"attention", "dropout"} <= {s.kind for s in sites if s.sampled}
    result = kd.predict_mc(model, inputs, S, seed=0, task="classification", from_logits=True)
    assert (result.variance.max(axis=-1) > 1e-8).all()
    assert (result.mutual_information > 0).all()


def test_bert_classifier_samples_do_not_depend_on_how_rows_are_batched(bert):
    # 3 rows x 4 samples = 12 tiled rows, the sequence length: Keras' TF ops.add
    # once broadcast the per-row mask keys along the token axis there.
    model, inputs = bert
    options = dict(task="classification", from_logits=True, return_samples=True, seed=4)
    together = kd.predict_mc(model, inputs, 4, **options).samples
    one_by_one = kd.predict_mc(model, inputs, 4, batch_size=1, **options).samples
    np.testing.assert_allclose(together, one_by_one, rtol=1e-5, atol=1e-6)


def test_bert_classifier_exports_checks_and_answers_mc_over_rest_with_dict_inputs(bert, tmp_path):
    from keras_dropout.serving.client import Client
    from keras_dropout.serving.server import Server

    model, inputs = bert
    path = export(model, tmp_path / "bert", num_samples=S, max_samples=16, from_logits=True)
    assert check(path) == []
    server = Server(
        model_name="bert", model_base_path=str(tmp_path / "bert"), port=0, rest_api_port=0
    )
    server.start()
    try:
        client = Client(rest_url=server.rest_url, model_name="bert")
        served = client.predict({k: v.tolist() for k, v in inputs.items()}, signature_name="mc")
        assert served["mean"].shape == (3, 3)
        np.testing.assert_allclose(served["mean"].sum(axis=-1), 1.0, rtol=1e-5)
        assert (served["variance"] > 0).any()
        sampled = client.predict(
            {**{k: v.tolist() for k, v in inputs.items()}, "num_samples": S, "seed": 3},
            signature_name="mc_sample",
        )
        local = kd.predict_mc(model, inputs, S, seed=3, task="classification", from_logits=True)
        np.testing.assert_allclose(sampled["mean"], local.mean, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(sampled["variance"], local.variance, rtol=1e-3, atol=1e-6)
        client.close()
    finally:
        server.stop(grace=1)


def test_gpt2_backbone_samples_and_exports(tmp_path):
    model, inputs = tiny_models.gpt2_backbone(dropout=0.1)
    result = kd.predict_mc(model, inputs, S, seed=0)
    assert result.mean.shape == (3, tiny_models.SEQ_LEN, 32)
    assert result.variance.mean() > 0
    path = export(model, tmp_path / "m", num_samples=4, batching=True)
    assert check(path, batching=True) == []


def test_vit_classifier_samples_every_block():
    built = tiny_models.vit_classifier(dropout=0.1)
    if built is None:
        pytest.skip("keras_hub has no ViT")
    model, inputs = built
    assert sum(s.sampled for s in kd.stochastic_sites(model)) >= 6
    result = kd.predict_mc(model, inputs, S, seed=0)
    assert (result.variance > 0).any()


@pytest.mark.parametrize("builder", ["efficientnet_b0", "mobilenet_v3_small"])
def test_keras_applications_sample_and_convert(builder):
    model, inputs = getattr(tiny_models, builder)()
    # The graph, not XLA: these convnets compile 2-3x longer under XLA.
    result = kd.predict_mc(model, inputs, S, seed=0, jit_compile=False)
    assert result.task == "classification" and (result.variance.max(axis=-1) > 0).all()
    converted = kd.convert(model)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(converted(inputs)),
        keras.ops.convert_to_numpy(model(inputs)),
        rtol=1e-5,
        atol=1e-6,
    )


def test_keras_applications_net_exports_and_checks(tmp_path):
    # One net exports (EfficientNet's export adds a minute of tracing and nothing new to check).
    model, _ = tiny_models.mobilenet_v3_small()
    # batching=True leaves mc_sample out: a third of the export's tracing time.
    path = export(model, tmp_path / "m", num_samples=4, batching=True)
    assert check(path, batching=True) == []


def test_mc_sample_equals_predict_mc_for_the_same_seed_and_rows(tmp_path):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((5, 3))
    hidden = keras.layers.LSTM(8, dropout=0.2, recurrent_dropout=0.2)(inputs)
    hidden = keras.layers.Dropout(0.3)(keras.layers.Dense(16, activation="relu")(hidden))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(hidden))
    x = np.random.default_rng(0).normal(size=(7, 5, 3)).astype("float32")
    path = export(model, tmp_path / "m", num_samples=S)
    assert check(path) == []  # no AssignVariableOp: the RNN's seed generator is never advanced
    name = model.inputs[0].name
    served = _call(_signature(path, "mc_sample"), {name: x}, num_samples=np.int32(S), seed=np.int64(-9))
    local = kd.predict_mc(model, x, S, seed=-9, jit_compile=False)
    np.testing.assert_allclose(served["mean"], local.mean, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(served["variance"], local.variance, rtol=1e-3, atol=1e-7)
    np.testing.assert_allclose(served["mutual_information"], local.mutual_information, rtol=1e-3, atol=1e-6)


def test_dict_input_functional_model_exports_and_serves_by_key(tmp_path):
    a, b = keras.Input((3,), name="alpha"), keras.Input((2,), name="beta")
    merged = keras.layers.Concatenate()([a, b])
    model = keras.Model({"a": a, "b": b}, keras.layers.Dense(1)(keras.layers.Dropout(0.5)(merged)))
    path = export(model, tmp_path / "d", num_samples=S)
    assert check(path) == []
    x = {"a": np.ones((2, 3), "float32"), "b": np.full((2, 2), 2.0, "float32")}
    served = _call(_signature(path, "mc_sample"), x, num_samples=np.int32(S), seed=np.int64(1))
    local = kd.predict_mc(model, x, S, seed=1)
    np.testing.assert_allclose(served["mean"], local.mean, rtol=1e-5, atol=1e-6)


def _string_lookup_model():
    inputs = keras.Input((1,), dtype="string")
    ids = keras.layers.StringLookup(vocabulary=["a", "b", "c"])(inputs)
    hidden = keras.layers.Flatten()(keras.layers.Embedding(5, 4)(ids))
    return keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Dropout(0.5)(hidden)))


def _text_vectorization_model():
    vectorize = keras.layers.TextVectorization(max_tokens=20, output_sequence_length=4)
    vectorize.adapt(["the cat sat", "a dog ran far", "the dog sat"])
    inputs = keras.Input((1,), dtype="string")
    hidden = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(20, 4)(vectorize(inputs)))
    return keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(keras.layers.Dropout(0.5)(hidden)))


@pytest.mark.parametrize("build", [_string_lookup_model, _text_vectorization_model])
def test_string_models_run_twice_under_the_default_jit_compile(build, capsys, tmp_path):
    model = build()
    x = np.array([["the cat"], ["b"], ["a dog"]], dtype=object)
    first = kd.predict_mc(model, x, S, seed=0, verbose=1)
    assert "graph (XLA cannot compile it" in capsys.readouterr().out  # the choice is visible
    assert True not in mc._compiled_functions[model]  # and XLA was never tried
    second = kd.predict_mc(model, x, S, seed=0)
    np.testing.assert_array_equal(first.mean, second.mean)
    assert (first.variance > 0).all()
    path = export(model, tmp_path / "m", num_samples=4)
    assert check(path) == []


class SubclassedClassifier(keras.Model):
    def __init__(self):
        super().__init__()
        self.hidden = keras.layers.Dense(16, activation="relu")
        self.drop = keras.layers.Dropout(0.3)
        self.out = keras.layers.Dense(3, activation="softmax")

    def call(self, x, training=None):
        return self.out(self.drop(self.hidden(x), training=training))


def test_subclassed_model_called_once_exports_and_matches_predict_mc(tmp_path):
    keras.utils.set_random_seed(0)
    model = SubclassedClassifier()
    x = np.random.default_rng(0).normal(size=(5, 4)).astype("float32")
    model(x)
    path = export(model, tmp_path / "sub", num_samples=S, task="classification")
    assert check(path) == []
    served = _call(_signature(path, "mc_sample"), {"inputs": x}, num_samples=np.int32(S), seed=np.int64(2))
    local = kd.predict_mc(model, x, S, seed=2, task="classification")
    np.testing.assert_allclose(served["mean"], local.mean, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(served["mutual_information"], local.mutual_information, rtol=1e-3, atol=1e-6)


def test_subclassed_model_never_called_is_refused_with_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="call it once on a batch"):
        export(SubclassedClassifier(), tmp_path / "never")
