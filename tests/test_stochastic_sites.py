"""Every dropout a model holds samples, wherever it sits (DESIGN.md section 3).

Specification: "Every stochastic regulariser a model holds samples under
kd.sampling(), predict_mc and the MC signatures", `kd.stochastic_sites`,
`row_ids` and seeds. Each site kind gets a model whose only dropout is that
site, next to a companion output carrying keras-dropout noise (so the model
always has something to sample even at rate 0): at rate > 0 the site's output
varies across samples; at rate 0 every sample equals the deterministic output.
"""

import numpy as np
import pytest

import keras
from keras import ops

import keras_dropout as kd

SEQ, FEATURES, ROWS = 5, 4, 6
# The site tests check what samples, not the compiler: TF's graph compiles RNNs
# in a fraction of XLA's time (masks are the same hash either way); JAX jits.
JIT = "auto" if keras.backend.backend() == "jax" else False


def _sequences(rows=ROWS, seed=0):
    return np.random.default_rng(seed).normal(size=(rows, SEQ, FEATURES)).astype("float32")


class DropoutBlock(keras.layers.Layer):
    """A custom layer holding a stock Dropout as an attribute."""

    def __init__(self, rate, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(FEATURES)
        self.drop = keras.layers.Dropout(rate)

    def call(self, x, training=None):
        return self.drop(self.dense(x), training=training)


def _mha(rate):
    return lambda x: keras.layers.MultiHeadAttention(2, 4, dropout=rate)(x, x)


def _attention(rate):
    return lambda x: keras.layers.Attention(dropout=rate)([x, x])


def _rnn(cls, **kwargs):
    return lambda x: cls(6, return_sequences=True, **kwargs)(x)


def _transformer_encoder(rate):
    keras_hub = pytest.importorskip("keras_hub")
    return lambda x: keras_hub.layers.TransformerEncoder(8, 2, dropout=rate)(x)


SITES = {
    "multi_head_attention": (_mha, "attention"),
    "attention_layer": (_attention, "attention"),
    "time_distributed": (lambda r: keras.layers.TimeDistributed(keras.layers.Dropout(r)), "dropout"),
    "custom_layer_attribute": (lambda r: DropoutBlock(r), "dropout"),
    "lstm_dropout": (lambda r: _rnn(keras.layers.LSTM, dropout=r), "rnn_input"),
    "lstm_recurrent_dropout": (lambda r: _rnn(keras.layers.LSTM, recurrent_dropout=r), "rnn_recurrent"),
    "gru_dropout": (lambda r: _rnn(keras.layers.GRU, dropout=r), "rnn_input"),
    "gru_recurrent_dropout": (lambda r: _rnn(keras.layers.GRU, recurrent_dropout=r), "rnn_recurrent"),
    "simple_rnn_dropout": (lambda r: _rnn(keras.layers.SimpleRNN, dropout=r), "rnn_input"),
    "simple_rnn_recurrent_dropout": (
        lambda r: _rnn(keras.layers.SimpleRNN, recurrent_dropout=r),
        "rnn_recurrent",
    ),
    "bidirectional_lstm": (
        lambda r: keras.layers.Bidirectional(
            keras.layers.LSTM(3, return_sequences=True, dropout=r, recurrent_dropout=r)
        ),
        "rnn_input",
    ),
    "stacked_cells": (
        lambda r: keras.layers.RNN(
            [keras.layers.LSTMCell(4, dropout=r), keras.layers.GRUCell(4, recurrent_dropout=r)],
            return_sequences=True,
        ),
        "rnn_input",
    ),
    "keras_hub_transformer_encoder": (_transformer_encoder, "attention"),
}


def _site_model(name, rate):
    """`[site output, companion output]`; the companion always has noise."""
    keras.utils.set_random_seed(0)
    make, _ = SITES[name]
    inputs = keras.Input((SEQ, FEATURES))
    site = make(rate)(inputs)
    companion = kd.layers.MCGaussianNoise(1.0)(keras.layers.GlobalAveragePooling1D()(inputs))
    return keras.Model(inputs, {"site": site, "companion": companion})


@pytest.mark.parametrize("name", sorted(SITES))
def test_a_model_whose_only_dropout_is_this_site_has_variance(name):
    model = _site_model(name, 0.4)
    result = kd.predict_mc(model, _sequences(), num_samples=16, seed=0, jit_compile=JIT)["site"]
    assert result.variance.max() > 1e-6
    kinds = {site.kind for site in kd.stochastic_sites(model) if site.sampled}
    assert SITES[name][1] in kinds


@pytest.mark.parametrize("name", sorted(SITES))
def test_at_rate_zero_every_sample_is_the_deterministic_output(name):
    model = _site_model(name, 0.0)
    x = _sequences()
    result = kd.predict_mc(model, x, 4, seed=0, return_samples=True, jit_compile=JIT)["site"]
    deterministic = ops.convert_to_numpy(model(x)["site"])
    for s in range(4):
        np.testing.assert_allclose(result.samples[:, s], deterministic, rtol=1e-5, atol=1e-5)


def test_rnn_input_mask_is_held_over_time_steps_and_differs_between_samples():
    # h_t = x_t * m (identity kernel, no recurrence): with x = 1, h_t is the mask.
    rnn = keras.layers.SimpleRNN(FEATURES, dropout=0.5, activation="linear", return_sequences=True)
    model = keras.Sequential([keras.Input((SEQ, FEATURES)), rnn])
    rnn.set_weights([np.eye(FEATURES), np.zeros((FEATURES, FEATURES)), np.zeros(FEATURES)])
    samples = kd.predict_mc(
        model, np.ones((2, SEQ, FEATURES), "float32"), 32, seed=3, return_samples=True, jit_compile=JIT
    ).samples
    assert set(np.unique(samples.round(5))) <= {0.0, 2.0}
    np.testing.assert_array_equal(samples, np.repeat(samples[:, :, :1], SEQ, axis=2))
    per_sample = samples[:, :, 0].reshape(-1, FEATURES)
    assert len({row.tobytes() for row in per_sample}) > 4


def test_rnn_recurrent_mask_is_held_over_time_steps_and_differs_between_samples():
    # h_t = 1 + m * h_{t-1}: a mask held over time gives, per unit, either
    # 1, 1, 1, ... (m = 0) or 1, 3, 7, 15, ... (m = 2); a mask redrawn per step
    # would mix the two.
    rnn = keras.layers.SimpleRNN(
        FEATURES, recurrent_dropout=0.5, activation="linear", return_sequences=True
    )
    model = keras.Sequential([keras.Input((SEQ, FEATURES)), rnn])
    rnn.set_weights([np.full((FEATURES, FEATURES), 1.0 / FEATURES), np.eye(FEATURES), np.zeros(FEATURES)])
    samples = kd.predict_mc(
        model, np.ones((2, SEQ, FEATURES), "float32"), 32, seed=4, return_samples=True, jit_compile=JIT
    ).samples
    kept = 2.0 ** np.arange(1, SEQ + 1) - 1
    for trajectory in samples.transpose(0, 1, 3, 2).reshape(-1, SEQ):
        assert np.allclose(trajectory, 1.0) or np.allclose(trajectory, kept), trajectory
    first_step_masks = samples[:, :, 1].reshape(-1, FEATURES)
    assert len({row.round(3).tobytes() for row in first_step_masks}) > 4


class SubclassedRegressor(keras.Model):
    def __init__(self, stock):
        super().__init__()
        self.hidden = keras.layers.Dense(32, activation="relu")
        self.drop = keras.layers.Dropout(0.3) if stock else kd.layers.MCDropout(0.3)
        self.out = keras.layers.Dense(1)

    def call(self, x, training=None):
        return self.out(self.drop(self.hidden(x), training=training))


def _naive_moments(model, x, num_samples, seed):
    with kd.sampling(seed=seed):
        draws = np.stack([ops.convert_to_numpy(model(x)) for _ in range(num_samples)], axis=1)
    return draws.mean(axis=1), draws.var(axis=1)


@pytest.mark.parametrize("stock", [False, True], ids=["mc_layer", "stock_dropout"])
@pytest.mark.parametrize("rows,chunk_size", [(5, 8192), (12, 64), (7, 300)])
def test_subclassed_model_rows_match_a_naive_sampled_loop(stock, rows, chunk_size):
    keras.utils.set_random_seed(1)
    model = SubclassedRegressor(stock)
    # Rows on very different scales: a row answered with another row's
    # samples is off by many standard errors.
    x = (np.random.default_rng(2).normal(size=(rows, 3)) * np.arange(1, rows + 1)[:, None]).astype(
        "float32"
    )
    num_samples = 200
    result = kd.predict_mc(model, x, num_samples, seed=0, chunk_size=chunk_size)
    naive_mean, naive_var = _naive_moments(model, x, num_samples, seed=1)
    standard_error = np.sqrt((result.variance + naive_var) / num_samples) + 1e-6
    assert (np.abs(result.mean - naive_mean) < 6 * standard_error).all()
    # Variances agree within their own sampling error (relative standard
    # error of the ratio about 0.14 at S = 200; 0.5 is beyond 3.5 of them).
    np.testing.assert_allclose(result.variance, naive_var, rtol=0.5, atol=1e-6)
    assert (result.variance > 0).all()


def test_stochastic_sites_lists_nested_sites_with_paths_and_prints_a_table():
    inner = keras.Sequential(
        [keras.Input((SEQ, FEATURES)), keras.layers.LSTM(4, dropout=0.2), keras.layers.Dropout(0.0)],
        name="encoder",
    )
    inputs = keras.Input((SEQ, FEATURES))
    outputs = kd.layers.MCDropout(0.1, name="head_dropout")(inner(inputs))
    sites = kd.stochastic_sites(keras.Model(inputs, outputs))
    described = [(s.path, s.kind, s.rate, s.sampled) for s in sites]
    rnn_sites = [s for s in sites if s.kind == "rnn_input"]
    assert len(rnn_sites) == 1 and rnn_sites[0].sampled and rnn_sites[0].rate == pytest.approx(0.2)
    assert rnn_sites[0].path.startswith("encoder/") and rnn_sites[0].path.endswith("_cell")
    assert ("head_dropout", "dropout", 0.1, True) in described
    rate_zero = [s for s in sites if s.rate == 0.0]
    assert rate_zero and not rate_zero[0].sampled and "0" in rate_zero[0].reason
    table = str(sites)
    assert "path" in table.splitlines()[0] and "head_dropout" in table


def test_a_layer_applying_its_own_dropout_is_named_not_skipped_silently():
    class OwnNoise(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.dropout = 0.3
            self.seed_generator = keras.random.SeedGenerator(0)

        def call(self, x, training=False):
            if training:
                return keras.random.dropout(x, self.dropout, seed=self.seed_generator)
            return x

    inputs = keras.Input((FEATURES,))
    model = keras.Model(inputs, kd.layers.MCDropout(0.2)(OwnNoise(name="own_noise")(inputs)))
    sites = kd.stochastic_sites(model)
    own = [s for s in sites if s.path == "own_noise"]
    assert own and not own[0].sampled and "cannot be sampled" in own[0].reason
    with pytest.warns(UserWarning, match="own_noise"):
        kd.predict_mc(model, np.ones((2, FEATURES), "float32"), 4, seed=0)


def test_nothing_to_sample_error_quotes_the_sites():
    model = keras.Sequential(
        [keras.Input((SEQ, FEATURES)), keras.layers.LSTM(3), keras.layers.Dropout(0.0, name="no_rate")]
    )
    with pytest.raises(ValueError, match="(?s)nothing that samples.*no_rate.*rate is 0"):
        kd.predict_mc(model, _sequences(), 4)


@pytest.mark.parametrize("seed", [-1, 2**40, -(2**63), 2**63 - 1, np.int64(-5), np.uint32(7)])
def test_any_64_bit_seed_is_accepted_and_reproducible(seed):
    model = _site_model("time_distributed", 0.3)
    first = kd.predict_mc(model, _sequences(), 8, seed=seed)["site"].mean
    second = kd.predict_mc(model, _sequences(), 8, seed=seed)["site"].mean
    np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize("seed", [2**63, -(2**63) - 1, 2**64, 1.5, "7", True])
def test_seeds_out_of_range_or_not_integers_raise_value_error_naming_seed(seed):
    model = _site_model("time_distributed", 0.3)
    with pytest.raises(ValueError, match="`seed`"):
        kd.predict_mc(model, _sequences(), 4, seed=seed)


def test_row_ids_key_the_masks_whatever_the_batch_holds():
    model = _site_model("lstm_dropout", 0.4)
    x = _sequences(rows=6)
    ids = np.array([10, 2**40, -3, 7, 99, 5])
    full = kd.predict_mc(model, x, 8, seed=5, row_ids=ids, return_samples=True)["site"].samples
    order = np.array([4, 1, 5])
    part = kd.predict_mc(
        model, x[order], 8, seed=5, row_ids=ids[order], return_samples=True, chunk_size=16
    )["site"].samples
    np.testing.assert_allclose(part, full[order], rtol=1e-5, atol=1e-6)
    other = kd.predict_mc(model, x, 8, seed=5, return_samples=True)["site"].samples
    assert not np.allclose(other, full)


@pytest.mark.parametrize("row_ids", [np.arange(3), np.zeros((6, 2), int), np.linspace(0, 1, 6)])
def test_bad_row_ids_raise_value_error(row_ids):
    model = _site_model("lstm_dropout", 0.4)
    with pytest.raises(ValueError, match="`row_ids`"):
        kd.predict_mc(model, _sequences(rows=6), 4, row_ids=row_ids)


def test_dict_outputs_are_keyed_by_the_models_dict_keys():
    inputs = keras.Input((FEATURES,))
    hidden = kd.layers.MCDropout(0.3)(keras.layers.Dense(8)(inputs))
    outputs = {
        "label": keras.layers.Dense(3, activation="softmax", name="cls")(hidden),
        "score": keras.layers.Dense(1, name="reg")(hidden),
    }
    result = kd.predict_mc(keras.Model(inputs, outputs), np.ones((2, FEATURES), "float32"), 8, seed=0)
    assert set(result) == {"label", "score"}
    assert result["label"].task == "classification" and result["score"].task == "regression"
    assert result["label"].mean.shape == (2, 3)


def test_outside_sampling_stock_sites_behave_exactly_as_keras_wrote_them():
    model = _site_model("multi_head_attention", 0.5)
    x = _sequences()
    before = ops.convert_to_numpy(model(x)["site"])
    kd.predict_mc(model, x, 4, seed=0)
    np.testing.assert_array_equal(ops.convert_to_numpy(model(x)["site"]), before)
    trained = [ops.convert_to_numpy(model(x, training=True)["site"]) for _ in range(2)]
    assert not np.allclose(trained[0], trained[1])  # Keras' own training dropout


def test_conv_lstm_dropout_and_recurrent_dropout_sample():
    model = keras.Sequential(
        [
            keras.Input((SEQ, 6, 2)),
            keras.layers.ConvLSTM1D(3, 3, dropout=0.3, recurrent_dropout=0.3),
            keras.layers.Flatten(),
            keras.layers.Dense(1),
        ]
    )
    assert {s.kind for s in kd.stochastic_sites(model) if s.sampled} == {"rnn_input", "rnn_recurrent"}
    x = np.random.default_rng(0).normal(size=(3, SEQ, 6, 2)).astype("float32")
    result = kd.predict_mc(model, x, 16, seed=0, jit_compile=JIT)
    assert (result.variance > 0).all()


def _unknown_steps_mc_sample(model, tmp_path):
    """The exported `mc_sample`: its signature leaves the number of steps unknown."""
    import tensorflow as tf

    path = kd.serving.export(model, tmp_path / "td", num_samples=4)
    signature = tf.saved_model.load(path).signatures["mc_sample"]
    return lambda x, n, seed: signature(
        **{model.inputs[0].name: tf.constant(x)}, num_samples=tf.constant(n), seed=tf.constant(seed, tf.int64)
    )


@pytest.mark.tf_only
@pytest.mark.parametrize("dropout", [keras.layers.Dropout, kd.layers.MCDropout])
def test_time_distributed_over_unknown_steps_draws_a_mask_per_step(dropout, tmp_path):
    if keras.backend.backend() != "tensorflow":
        pytest.skip("exports need TensorFlow")
    model = keras.Sequential([keras.Input((None, FEATURES)), keras.layers.TimeDistributed(dropout(0.5))])
    mc_sample = _unknown_steps_mc_sample(model, tmp_path)
    x = np.ones((1, 2 * SEQ, FEATURES), "float32")
    # Per step the variance is 1 for every element (x = 1, p = 0.5, scale 2);
    # one mask reused over all steps would give every step the same mean.
    means = mc_sample(x, 64, 3)["mean"].numpy()[0]
    assert len({step.round(4).tobytes() for step in means}) == 2 * SEQ


@pytest.mark.tf_only
def test_time_distributed_over_unknown_steps_refuses_a_layer_it_cannot_sample_per_step(tmp_path):
    if keras.backend.backend() != "tensorflow":
        pytest.skip("exports need TensorFlow")
    inner = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(3), keras.layers.Dropout(0.5)])
    model = keras.Sequential([keras.Input((None, FEATURES)), keras.layers.TimeDistributed(inner)])
    with pytest.raises(ValueError, match="fixed number of time steps"):
        kd.serving.export(model, tmp_path / "td", num_samples=4)
    spatial = keras.layers.TimeDistributed(keras.layers.SpatialDropout1D(0.5))
    model = keras.Sequential([keras.Input((None, 3, FEATURES)), spatial])
    with pytest.raises(ValueError, match="fixed number of time steps"):
        kd.serving.export(model, tmp_path / "td", num_samples=4)


@pytest.mark.parametrize("dropout", [keras.layers.Dropout, kd.layers.MCDropout], ids=["stock", "ours"])
def test_a_batch_shared_noise_shape_shares_the_mask_across_rows_not_samples(dropout):
    model = keras.Sequential([keras.Input((FEATURES,)), dropout(0.5, noise_shape=(1, FEATURES))])
    samples = kd.predict_mc(
        model, np.ones((3, FEATURES), "float32"), 64, seed=0, return_samples=True, jit_compile=JIT
    ).samples
    assert samples.var(axis=1).min() > 0.3  # per element: 4 p (1 - p) = 1
    np.testing.assert_array_equal(samples[0], samples[1])  # one mask for the rows of a sample
    np.testing.assert_array_equal(samples[0], samples[2])


def test_a_dropout_subclass_overriding_call_is_named_and_left_deterministic():
    class LoggedDropout(keras.layers.Dropout):
        def call(self, inputs, training=False):
            return super().call(inputs, training=training)

    inputs = keras.Input((FEATURES,))
    hidden = LoggedDropout(0.5, name="logged")(keras.layers.Dense(FEATURES)(inputs))
    model = keras.Model(inputs, kd.layers.MCGaussianNoise(0.1)(hidden))
    logged = [s for s in kd.stochastic_sites(model) if s.path == "logged"]
    assert logged and not logged[0].sampled and "overrides" in logged[0].reason
    x = np.ones((3, FEATURES), "float32")
    with pytest.warns(UserWarning, match="logged"):
        result = kd.predict_mc(model, x, 400, seed=0, jit_compile=JIT)
    deterministic = ops.convert_to_numpy(model(x))
    np.testing.assert_allclose(result.mean, deterministic, atol=0.05)
    np.testing.assert_allclose(result.variance, 0.01, rtol=0.3)  # the noise layer's alone


def test_a_stochastic_depth_rate_is_named_not_skipped_silently():
    class DropPath(keras.layers.Layer):
        def __init__(self, drop_path_rate, **kwargs):
            super().__init__(**kwargs)
            self.drop_path_rate = drop_path_rate

        def call(self, x, training=False):
            return x

    inputs = keras.Input((FEATURES,))
    model = keras.Model(inputs, kd.layers.MCDropout(0.1)(DropPath(0.2, name="drop_path")(inputs)))
    site = [s for s in kd.stochastic_sites(model) if s.path == "drop_path"]
    assert site and not site[0].sampled and site[0].rate == pytest.approx(0.2)
    assert "drop_path_rate" in site[0].reason


@pytest.mark.parametrize(
    "layer,variance",
    [
        (keras.layers.GaussianNoise(0.5), 0.25),
        (keras.layers.GaussianDropout(0.2), 0.25),  # x^2 rate / (1 - rate), x = 1
        (keras.layers.Dropout(0.2), 0.25),  # x^2 rate / (1 - rate)
    ],
    ids=["gaussian_noise", "gaussian_dropout", "dropout"],
)
def test_stock_noise_layers_sample_with_their_training_statistics(layer, variance):
    model = keras.Sequential([keras.Input((256,)), layer])
    result = kd.predict_mc(model, np.ones((2, 256), "float32"), 200, seed=0, jit_compile=JIT)
    # 512 x 200 draws: the pooled mean and variance are within 3% of theory.
    assert abs(result.mean.mean() - 1.0) < 0.02
    assert abs(result.variance.mean() / variance - 1.0) < 0.05


def test_stock_spatial_dropout_channels_first_drops_whole_channels():
    model = keras.Sequential(
        [keras.Input((3, 4, 4)), keras.layers.SpatialDropout2D(0.5, data_format="channels_first")]
    )
    samples = kd.predict_mc(
        model, np.ones((2, 3, 4, 4), "float32"), 32, seed=0, return_samples=True, jit_compile=JIT
    ).samples
    per_channel = samples.reshape(2, 32, 3, 16)
    assert (per_channel.min(axis=-1) == per_channel.max(axis=-1)).all()  # a channel is kept or dropped whole
    assert set(np.unique(per_channel)) == {0.0, 2.0}


def test_kd_sampling_with_a_seed_makes_stock_sites_reproducible_in_eager_calls():
    model = _site_model("lstm_dropout", 0.4)
    x = _sequences()
    draws = []
    for _ in range(2):
        with kd.sampling(seed=11):
            draws.append([ops.convert_to_numpy(model(x)["site"]) for _ in range(2)])
    np.testing.assert_array_equal(draws[0][0], draws[1][0])
    np.testing.assert_array_equal(draws[0][1], draws[1][1])
    assert not np.allclose(draws[0][0], draws[0][1])


def test_kd_sampling_in_one_thread_leaves_stock_models_in_other_threads_alone():
    import threading

    model = _site_model("multi_head_attention", 0.5)
    x = _sequences()
    deterministic = ops.convert_to_numpy(model(x)["site"])
    entered, release, seen = threading.Event(), threading.Event(), {}

    def hold_sampling():
        with kd.sampling(seed=0):
            entered.set()
            release.wait(30)

    holder = threading.Thread(target=hold_sampling)
    holder.start()
    entered.wait(30)
    try:
        seen["other"] = ops.convert_to_numpy(model(x)["site"])
    finally:
        release.set()
        holder.join()
    np.testing.assert_array_equal(seen["other"], deterministic)


def test_outside_sampling_the_hooks_return_exactly_what_keras_own_code_returns():
    from keras_dropout import _keras_internals as internals

    x = np.random.default_rng(0).normal(size=(4, 16)).astype("float32")
    for cls in (keras.layers.Dropout, keras.layers.GaussianDropout, keras.layers.GaussianNoise):
        hooked, unhooked = cls(0.3, seed=5), cls(0.3, seed=5)
        original = internals._installed[(cls, "call")]
        for training in (True, False):
            # Same draws; JAX may fuse the layer's ops differently (1 ulp).
            np.testing.assert_allclose(
                ops.convert_to_numpy(hooked(x, training=training)),
                ops.convert_to_numpy(original(unhooked, x, training=training)),
                rtol=1e-6,
                atol=1e-7,
            )
