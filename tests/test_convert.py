"""`kd.convert`: stock Keras dropout-family layers swapped for their MC counterparts.

Specification: DESIGN.md section 3 (`kd.convert`).
"""

import numpy as np
import pytest

import keras
from keras import ops

import keras_dropout as kd

L = keras.layers

STOCK_TO_MC = {
    L.Dropout: kd.layers.MCDropout,
    L.SpatialDropout1D: kd.layers.MCSpatialDropout1D,
    L.SpatialDropout2D: kd.layers.MCSpatialDropout2D,
    L.SpatialDropout3D: kd.layers.MCSpatialDropout3D,
    L.GaussianDropout: kd.layers.MCGaussianDropout,
    L.AlphaDropout: kd.layers.MCAlphaDropout,
    L.GaussianNoise: kd.layers.MCGaussianNoise,
}


def _mixed_model():
    """A functional model with every stock kind, BatchNormalization and two branches.

    Branch one reshapes its features through the ranks the spatial layers
    need; branch two carries the element-wise noise layers.
    """
    inputs = keras.Input((12,), name="features")
    hidden = L.Dense(24, name="dense_in")(inputs)
    hidden = L.BatchNormalization(name="bn")(hidden)
    hidden = L.Dropout(0.3, noise_shape=(None, 24), seed=11, name="dropout")(hidden)

    spatial = L.Reshape((6, 4), name="to_3d")(hidden)
    spatial = L.SpatialDropout1D(0.25, seed=1, name="spatial_1d")(spatial)
    spatial = L.Reshape((2, 3, 4), name="to_4d")(spatial)
    spatial = L.SpatialDropout2D(0.25, data_format="channels_first", name="spatial_2d")(spatial)
    spatial = L.Reshape((2, 3, 2, 2), name="to_5d")(spatial)
    spatial = L.SpatialDropout3D(0.25, name="spatial_3d")(spatial)
    spatial = L.Flatten(name="flatten")(spatial)

    noisy = L.Dense(8, activation="selu", name="dense_selu")(hidden)
    noisy = L.GaussianDropout(0.2, seed=2, name="gaussian_dropout")(noisy)
    noisy = L.AlphaDropout(0.1, noise_shape=(None, 8), name="alpha_dropout")(noisy)
    noisy = L.GaussianNoise(0.5, name="gaussian_noise")(noisy)

    merged = L.Concatenate(name="concat")([spatial, noisy])
    outputs = L.Dense(3, name="dense_out")(merged)
    model = keras.Model(inputs, outputs, name="mixed")
    _randomize_batchnorm(model.get_layer("bn"))
    return model


def _randomize_batchnorm(bn):
    rng = np.random.default_rng(1)
    bn.set_weights(
        [
            rng.uniform(0.5, 2.0, w.shape).astype("float32")
            if "variance" in w.path or "gamma" in w.path
            else rng.normal(size=w.shape).astype("float32")
            for w in bn.weights
        ]
    )


def _x(rows=16, features=12):
    return np.random.default_rng(0).normal(size=(rows, features)).astype("float32")


def _weights(model):
    return {v.path: np.array(v) for v in model.weights}


def _describe(model):
    return [(type(layer), layer.get_config()) for layer in model.layers]


def _differ(a, b):
    return not np.array_equal(np.asarray(a), np.asarray(b))


def _all_layers(model):
    return list(model._flatten_layers(include_self=False))


def test_every_stock_kind_is_replaced_by_its_mc_counterpart():
    original = _mixed_model()
    converted = kd.convert(original)
    swapped = 0
    for layer in original.layers:
        if type(layer) in STOCK_TO_MC:
            assert type(converted.get_layer(layer.name)) is STOCK_TO_MC[type(layer)]
            swapped += 1
    assert swapped == len(STOCK_TO_MC)


def test_deterministic_outputs_equal_the_original():
    original, x = _mixed_model(), _x()
    converted = kd.convert(original)
    expected = original.predict(x, verbose=0)
    np.testing.assert_allclose(converted.predict(x, verbose=0), expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(converted(x)), expected, rtol=1e-6, atol=1e-6
    )


def test_converted_model_samples_in_compiled_predict_inside_the_context():
    original, x = _mixed_model(), _x()
    converted = kd.convert(original)
    deterministic = converted.predict(x, verbose=0)
    with kd.sampling(seed=0):
        first, second = (converted.predict(x, verbose=0) for _ in range(2))
    assert _differ(first, deterministic)
    assert _differ(first, second)
    np.testing.assert_allclose(converted.predict(x, verbose=0), deterministic, rtol=1e-6, atol=1e-6)


def test_original_stock_model_warns_that_compiled_code_cannot_sample_it():
    # Keras' own Dropout cannot read the switch from compiled code: a warning
    # naming it and pointing to predict_mc, never silence, and the model keeps
    # working (eager calls inside the context do sample).
    original, x = _mixed_model(), _x()
    deterministic = ops.convert_to_numpy(original(x))
    with kd.sampling(seed=0):
        with pytest.warns(UserWarning, match="predict_mc"):
            compiled = original.predict(x, verbose=0, batch_size=len(x))
        eager = [ops.convert_to_numpy(original(x)) for _ in range(2)]
    np.testing.assert_allclose(compiled, deterministic, rtol=1e-5, atol=1e-5)
    assert _differ(eager[0], eager[1])
    np.testing.assert_allclose(
        ops.convert_to_numpy(original(x)), ops.convert_to_numpy(original(x, training=False))
    )


def test_entering_sampling_warns_about_stock_sites_compiled_before():
    original, x = _mixed_model(), _x()
    original.predict(x, verbose=0)
    with pytest.warns(UserWarning, match="(?s)compiled into inference functions while sampling was off.*dropout"):
        with kd.sampling(seed=0):
            pass


def test_original_layers_configs_and_weights_are_untouched():
    original, x = _mixed_model(), _x()
    layers_before, config_before = _describe(original), original.get_config()
    weights_before = _weights(original)
    converted = kd.convert(original)
    with kd.sampling():
        converted.predict(x, verbose=0)
    assert _describe(original) == layers_before
    assert original.get_config() == config_before
    weights_after = _weights(original)
    assert weights_after.keys() == weights_before.keys()
    for path, value in weights_before.items():
        assert weights_after[path].tobytes() == value.tobytes(), path


def test_non_dropout_layers_are_shared_not_copied():
    original = _mixed_model()
    converted = kd.convert(original)
    shared = 0
    for layer in original.layers:
        if type(layer) in STOCK_TO_MC or isinstance(layer, L.InputLayer):
            continue
        assert converted.get_layer(layer.name) is layer
        shared += 1
    assert shared == 9


def test_training_the_converted_model_trains_the_original():
    original, x = _mixed_model(), _x()
    converted = kd.convert(original)
    kernel_before = np.array(original.get_layer("dense_in").kernel)
    converted.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse", jit_compile=False)
    converted.fit(x, np.ones((len(x), 3), "float32"), epochs=1, verbose=0)
    kernel_after = np.array(original.get_layer("dense_in").kernel)
    assert _differ(kernel_after, kernel_before)
    np.testing.assert_allclose(
        original.predict(x, verbose=0), converted.predict(x, verbose=0), rtol=1e-6, atol=1e-6
    )


def test_swapped_configs_equal_the_stock_ones_plus_always_on_false():
    original = _mixed_model()
    converted = kd.convert(original)
    for layer in original.layers:
        if type(layer) not in STOCK_TO_MC:
            continue
        stock_config = layer.get_config()
        mc_config = converted.get_layer(layer.name).get_config()
        assert mc_config["always_on"] is False
        for key, value in stock_config.items():
            if key == "dtype":
                # Keras' spatial layers serialize the policy as a bare name.
                assert keras.dtype_policies.get(mc_config[key]).name == (
                    keras.dtype_policies.get(value).name
                )
            else:
                assert mc_config[key] == value, (layer.name, key)
        assert set(mc_config) - set(stock_config) <= {"always_on", "trainable"}


def test_sequential_model_converts_to_a_sequential_model():
    original = keras.Sequential(
        [
            keras.Input((12,)),
            L.Dense(16, name="dense_a"),
            L.Dropout(0.5, name="dropout"),
            L.Dense(2, name="dense_b"),
        ],
        name="seq",
    )
    converted = kd.convert(original)
    assert isinstance(converted, keras.Sequential)
    assert [type(layer) for layer in converted.layers] == [
        L.Dense,
        kd.layers.MCDropout,
        L.Dense,
    ]
    assert converted.layers[0] is original.layers[0]
    _assert_converts_faithfully(original, converted)


def _assert_converts_faithfully(original, converted, x=None):
    x = _x() if x is None else x
    expected = original.predict(x, verbose=0)
    np.testing.assert_allclose(converted.predict(x, verbose=0), expected, rtol=1e-6, atol=1e-6)
    with kd.sampling(seed=0):
        first, second = (converted.predict(x, verbose=0) for _ in range(2))
    assert _differ(first, expected)
    assert _differ(first, second)


def test_sequential_inside_functional_converts():
    inner = keras.Sequential(
        [keras.Input((16,)), L.Dense(16, name="inner_dense"), L.Dropout(0.5, name="inner_dropout")],
        name="inner",
    )
    inputs = keras.Input((12,))
    hidden = L.Dense(16, name="outer_dense")(inputs)
    outputs = L.Dense(2, name="outer_out")(inner(hidden))
    original = keras.Model(inputs, outputs, name="outer")
    converted = kd.convert(original)
    converted_inner = converted.get_layer("inner")
    assert isinstance(converted_inner, keras.Sequential)
    assert type(converted_inner.get_layer("inner_dropout")) is kd.layers.MCDropout
    assert type(inner.get_layer("inner_dropout")) is L.Dropout
    assert converted_inner.get_layer("inner_dense") is inner.get_layer("inner_dense")
    _assert_converts_faithfully(original, converted)


def test_functional_inside_sequential_converts():
    inner_inputs = keras.Input((16,))
    inner_hidden = L.Dense(16, name="inner_dense")(inner_inputs)
    inner_outputs = L.GaussianNoise(1.0, name="inner_noise")(inner_hidden)
    inner = keras.Model(inner_inputs, inner_outputs, name="inner")
    original = keras.Sequential(
        [keras.Input((12,)), L.Dense(16, name="outer_dense"), inner, L.Dense(2, name="outer_out")],
        name="outer",
    )
    converted = kd.convert(original)
    assert isinstance(converted, keras.Sequential)
    converted_inner = converted.get_layer("inner")
    assert type(converted_inner.get_layer("inner_noise")) is kd.layers.MCGaussianNoise
    assert type(inner.get_layer("inner_noise")) is L.GaussianNoise
    assert converted_inner.get_layer("inner_dense") is inner.get_layer("inner_dense")
    _assert_converts_faithfully(original, converted)


class _Subclassed(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = L.Dense(4)
        self.dropout = L.Dropout(0.5)

    def call(self, inputs):
        return self.dropout(self.dense(inputs))


def test_subclassed_model_is_refused_with_an_error_naming_it():
    model = _Subclassed(name="my_subclassed_net")
    model(_x())
    with pytest.raises(ValueError, match=r"subclassed model 'my_subclassed_net' \(_Subclassed\)"):
        kd.convert(model)


def test_stock_dropout_with_rate_one_is_refused_with_an_error_naming_it():
    model = keras.Sequential([keras.Input((12,)), L.Dropout(1.0, name="drop_everything")])
    with pytest.raises(ValueError, match=r"'drop_everything'.*rate"):
        kd.convert(model)


def test_non_model_argument_is_refused():
    with pytest.raises(ValueError, match="model"):
        kd.convert(L.Dropout(0.5))


@pytest.mark.parametrize(
    "make_layer, match",
    [
        (
            lambda: L.LSTM(4, dropout=0.2, recurrent_dropout=0.1, name="my_lstm"),
            r"'my_lstm' \(LSTM: dropout=0.2, recurrent_dropout=0.1\)",
        ),
        (lambda: L.GRU(4, dropout=0.3, name="my_gru"), r"'my_gru' \(GRU: dropout=0.3\)"),
    ],
    ids=["lstm", "gru"],
)
def test_recurrent_internal_dropout_is_named_in_a_warning(make_layer, match):
    layer = make_layer()
    inputs = keras.Input((5, 3))
    model = keras.Model(inputs, L.Dense(1)(layer(inputs)))
    with pytest.warns(UserWarning, match=match):
        converted = kd.convert(model)
    assert converted.get_layer(layer.name) is layer


def test_multi_head_attention_dropout_is_named_in_a_warning():
    inputs = keras.Input((5, 8))
    attention = L.MultiHeadAttention(num_heads=2, key_dim=4, dropout=0.1, name="my_attention")
    model = keras.Model(inputs, attention(inputs, inputs))
    with pytest.warns(UserWarning, match=r"'my_attention' \(MultiHeadAttention: dropout=0.1\)"):
        kd.convert(model)


def test_model_without_internal_dropout_converts_without_warning(recwarn):
    kd.convert(_mixed_model())
    assert not [w for w in recwarn if "keras_dropout.convert" in str(w.message)]


def test_converted_model_round_trips_through_a_keras_file(tmp_path):
    original, x = _mixed_model(), _x()
    converted = kd.convert(original)
    path = str(tmp_path / "converted.keras")
    converted.save(path)
    loaded = keras.models.load_model(path)
    for layer in original.layers:
        if type(layer) in STOCK_TO_MC:
            assert type(loaded.get_layer(layer.name)) is STOCK_TO_MC[type(layer)]
    _assert_converts_faithfully(original, loaded, x)
