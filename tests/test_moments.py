"""`kd.predict_moments`: moment propagation against Monte Carlo.

Specification: DESIGN.md section 3 (`kd.predict_moments`) and the approximations stated in
`keras_dropout/moments.py`. Each rule is checked on its own layer against 100,000 Monte Carlo
draws of that layer with Gaussian inputs of the same moments (where the rule is exact, the only
error is Monte Carlo's: means and variances within 5 of their standard errors, estimated from the
draws); whole models are
checked against `predict_mc` with S = 10,000, within the tolerances the diagonal approximation
earns (measured, stated below). Fixed seeds throughout.
"""

import keras
import numpy as np
import pytest

import keras_dropout as kd
from keras_dropout import moments as mp

DRAWS = 100_000
MEAN_SE = 5.0  # standard errors allowed, for means and for variances


def _input_moments(shape, seed=0):
    rng = np.random.default_rng(seed)
    mean = rng.normal(size=(1,) + shape).astype("float32")
    variance = rng.uniform(0.05, 0.5, size=(1,) + shape).astype("float32")
    return mean, variance


def _monte_carlo(layer, mean, variance, seed=0):
    """Mean and variance over DRAWS of `layer(x)` (noise on), x ~ N(mean, variance)."""
    rng = np.random.default_rng(seed + 1)
    x = (mean + np.sqrt(variance) * rng.standard_normal((DRAWS,) + mean.shape[1:])).astype("float32")
    keras.utils.set_random_seed(seed)
    outputs = []
    for start in range(0, DRAWS, 10_000):
        with kd.sampling(seed=seed + start):
            outputs.append(keras.ops.convert_to_numpy(layer(x[start : start + 10_000], training=True)))
    return _statistics(np.concatenate(outputs).astype("float64"))


def _statistics(y):
    """Mean, variance and the standard errors of both, over axis 0."""
    mean, variance = y.mean(axis=0), y.var(axis=0)
    fourth = ((y - mean) ** 4).mean(axis=0)
    return mean, variance, np.sqrt(variance / len(y)), np.sqrt(np.maximum(fourth - variance**2, 0) / len(y))


def _propagated(layer, mean, variance):
    result = mp._rule_for(layer)(layer, mp.Moments(keras.ops.convert_to_tensor(mean), keras.ops.convert_to_tensor(variance)))
    return keras.ops.convert_to_numpy(result.mean)[0], keras.ops.convert_to_numpy(result.variance)[0]


def _check(layer, shape, mean_tolerance=None, variance_rtol=None, seed=0):
    """Exact rules (no tolerances given): within 5 Monte Carlo standard errors, mean and variance."""
    mean, variance = _input_moments(shape, seed)
    layer.build((None,) + shape)
    mc_mean, mc_variance, mean_se, variance_se = _monte_carlo(layer, mean, variance, seed)
    got_mean, got_variance = _propagated(layer, mean, variance)
    mean_limit = MEAN_SE * mean_se + 1e-5 if mean_tolerance is None else mean_tolerance
    variance_limit = MEAN_SE * variance_se + 1e-6 if variance_rtol is None else variance_rtol * mc_variance
    assert np.all(np.abs(got_mean - mc_mean) <= mean_limit), np.abs(got_mean - mc_mean).max()
    assert np.all(np.abs(got_variance - mc_variance) <= variance_limit), (got_variance, mc_variance)


EXACT_LAYERS = {
    "Dropout": lambda: keras.layers.Dropout(0.3),
    "MCDropout": lambda: kd.layers.MCDropout(0.4),
    "SpatialDropout1D": lambda: keras.layers.SpatialDropout1D(0.3),
    "MCSpatialDropout1D": lambda: kd.layers.MCSpatialDropout1D(0.3),
    "GaussianDropout": lambda: keras.layers.GaussianDropout(0.3),
    "MCGaussianDropout": lambda: kd.layers.MCGaussianDropout(0.2),
    "GaussianNoise": lambda: keras.layers.GaussianNoise(0.5),
    "MCGaussianNoise": lambda: kd.layers.MCGaussianNoise(0.7),
    "AlphaDropout": lambda: keras.layers.AlphaDropout(0.2),
    "MCAlphaDropout": lambda: kd.layers.MCAlphaDropout(0.2),
    "Dense": lambda: keras.layers.Dense(5),
    "Dense relu": lambda: keras.layers.Dense(5, activation="relu"),
    "Dense tanh": lambda: keras.layers.Dense(5, activation="tanh"),
    "Dense gelu": lambda: keras.layers.Dense(5, activation="gelu"),
    "Dense sigmoid": lambda: keras.layers.Dense(5, activation="sigmoid"),
    "ConcreteDropout": lambda: kd.layers.ConcreteDropout(keras.layers.Dense(4), init_rate=0.3),
    "EinsumDense": lambda: keras.layers.EinsumDense("btd,de->bte", output_shape=(None, 3), bias_axes="e"),
    "Conv1D": lambda: keras.layers.Conv1D(3, 3, padding="same", activation="relu"),
    "ReLU": lambda: keras.layers.ReLU(),
    "LeakyReLU": lambda: keras.layers.LeakyReLU(0.2),
    "ELU": lambda: keras.layers.ELU(),
    "Activation softplus": lambda: keras.layers.Activation("softplus"),
    "Flatten": lambda: keras.layers.Flatten(),
    "AveragePooling1D": lambda: keras.layers.AveragePooling1D(2),
    "GlobalAveragePooling1D": lambda: keras.layers.GlobalAveragePooling1D(),
}


@pytest.mark.parametrize("name", sorted(EXACT_LAYERS))
def test_rule_matches_monte_carlo_of_its_layer(name):
    _check(EXACT_LAYERS[name](), (6, 4))


def test_conv2d_and_batch_normalization_rules_match_monte_carlo():
    conv = keras.layers.Conv2D(3, 3, activation="relu")
    _check(conv, (6, 6, 2))
    _check(keras.layers.DepthwiseConv2D(3, depth_multiplier=2, activation="relu"), (6, 6, 2))
    _check(keras.layers.SeparableConv2D(3, 3, activation="tanh"), (6, 6, 2))
    _check(keras.layers.SeparableConv1D(3, 2, padding="same"), (6, 4))
    norm = keras.layers.BatchNormalization()
    norm.build((None, 6, 4))
    norm.moving_mean.assign(np.linspace(-1, 1, 4))
    norm.moving_variance.assign(np.linspace(0.5, 2, 4))
    norm.gamma.assign(np.linspace(0.5, 1.5, 4))
    _check_inference_layer(norm, (6, 4))


def _check_inference_layer(layer, shape):
    # BatchNormalization normalises by batch statistics when training: checked in inference.
    mean, variance = _input_moments(shape)
    x = (mean + np.sqrt(variance) * np.random.default_rng(1).standard_normal((DRAWS,) + shape)).astype("float32")
    y = keras.ops.convert_to_numpy(layer(x, training=False)).astype("float64")
    mc_mean, mc_variance, mean_se, variance_se = _statistics(y)
    got_mean, got_variance = _propagated(layer, mean, variance)
    assert np.all(np.abs(got_mean - mc_mean) <= MEAN_SE * mean_se + 1e-5)
    assert np.all(np.abs(got_variance - mc_variance) <= MEAN_SE * variance_se + 1e-6)


def test_max_pooling_rule_is_clarks_approximation_within_its_stated_bias():
    # Clark's max of Gaussians folded over the window: measured within 0.02 of Monte Carlo's
    # mean and 10% of its variance on 2x2 windows of independent Gaussians (variances 0.05-0.5).
    _check(keras.layers.MaxPooling2D(2), (6, 6, 2), mean_tolerance=0.02, variance_rtol=0.1)
    _check(keras.layers.MaxPooling1D(3, strides=2, padding="same"), (7, 3), mean_tolerance=0.02, variance_rtol=0.1)


def test_layer_normalization_rule_is_an_approximation_within_its_stated_bias():
    # Normalising statistics taken as constants: with 32 features (variances 0.05-0.5) measured
    # 0.014 from Monte Carlo's mean and 0.92-1.23 of its variance (8 features: 0.05, 0.76-1.32).
    _check(keras.layers.LayerNormalization(), (32,), mean_tolerance=0.03, variance_rtol=0.3)


def test_dropconnect_rule_matches_monte_carlo_of_independent_kernel_masks():
    # The layer draws one kernel mask per call (shared by the batch's rows), so its Monte Carlo
    # is done here, one mask per draw, from its kernel: x (W * keep / (1 - rate)) + b. Linear,
    # so exact: an activation after it would see a sum of few Bernoulli terms, not a Gaussian.
    layer = kd.layers.DropConnectDense(5, rate=0.3)
    layer.build((None, 4))
    layer.bias.assign(np.linspace(-0.5, 0.5, 5))
    mean, variance = _input_moments((4,))
    rng = np.random.default_rng(7)
    kernel = keras.ops.convert_to_numpy(layer.kernel).astype("float64")
    x = mean + np.sqrt(variance) * rng.standard_normal((DRAWS, 4))
    keep = rng.random((DRAWS, 4, 5)) >= 0.3
    y = np.einsum("ni,nij->nj", x, kernel * keep / 0.7) + np.linspace(-0.5, 0.5, 5)
    mc_mean, mc_variance, mean_se, variance_se = _statistics(y)
    got_mean, got_variance = _propagated(layer, mean, variance)
    assert np.all(np.abs(got_mean - mc_mean) <= MEAN_SE * mean_se + 1e-5)
    assert np.all(np.abs(got_variance - mc_variance) <= MEAN_SE * variance_se + 1e-6)


# --- Whole models against predict_mc ------------------------------------------


def _mlp():
    keras.utils.set_random_seed(1)
    return keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(64, activation="relu"),
            kd.layers.MCDropout(0.2),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dropout(0.2),
            keras.layers.Dense(1),
        ]
    )


def _cnn():
    keras.utils.set_random_seed(2)
    return keras.Sequential(
        [
            keras.Input((12, 12, 1)),
            keras.layers.Conv2D(8, 3, activation="relu"),
            keras.layers.AveragePooling2D(2),
            kd.layers.MCSpatialDropout2D(0.2),
            keras.layers.Conv2D(8, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dropout(0.3),
            keras.layers.Dense(4, activation="softmax"),
        ]
    )


def _spearman(a, b):
    rank_a, rank_b = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return np.corrcoef(rank_a, rank_b)[0, 1]


def test_mlp_moments_match_predict_mc():
    model = _mlp()
    x = np.random.default_rng(3).normal(size=(200, 6)).astype("float32")
    moments = kd.predict_moments(model, x)
    mc = kd.predict_mc(model, x, 10_000, seed=0, verbose=0)
    scale = np.abs(mc.mean).max()
    assert np.abs(moments.mean - mc.mean).max() <= 0.05 * scale
    ratio = moments.variance / mc.variance
    # Covariance tracked through the 64-unit layers: measured median 1.00, range 0.91-1.07,
    # rank correlation 0.999 (the diagonal alone: median 1.08, range 0.78-1.39).
    assert 0.9 <= np.median(ratio) <= 1.1, np.median(ratio)
    assert np.all((ratio > 0.8) & (ratio < 1.25)), (ratio.min(), ratio.max())
    assert _spearman(moments.variance[:, 0], mc.variance[:, 0]) >= 0.98


def test_cnn_classifier_moments_match_predict_mc():
    model = _cnn()
    x = np.random.default_rng(4).normal(size=(100, 12, 12, 1)).astype("float32")
    moments = kd.predict_moments(model, x)
    mc = kd.predict_mc(model, x, 10_000, seed=0, verbose=0)
    assert np.abs(moments.mean - mc.mean).max() <= 0.05
    assert np.abs(moments.predictive_entropy - mc.predictive_entropy).max() <= 0.1
    assert _spearman(moments.mutual_information, mc.mutual_information) >= 0.8
    assert moments.samples is None


def test_covariance_makes_a_linear_chain_after_dropout_exact():
    # Dropout on deterministic features, then two linear layers: the units of the first share
    # the masks, so only the tracked covariance gives the output variance exactly.
    keras.utils.set_random_seed(3)
    model = keras.Sequential(
        [keras.Input((10,)), kd.layers.MCDropout(0.3), keras.layers.Dense(16), keras.layers.Dense(1)]
    )
    x = np.random.default_rng(8).normal(size=(40, 10)).astype("float32")
    mc = kd.predict_mc(model, x, 20_000, seed=1, return_samples=True, verbose=0)
    full = kd.predict_moments(model, x)
    diagonal = kd.predict_moments(model, x, covariance="diagonal")
    samples = mc.samples[:, :, 0].astype("float64")
    variance_se = np.sqrt(((samples - samples.mean(1, keepdims=True)) ** 4).mean(1) - samples.var(1) ** 2) / np.sqrt(20_000)
    assert np.all(np.abs(full.variance[:, 0] - mc.variance[:, 0]) <= MEAN_SE * variance_se + 1e-6)
    assert np.max(np.abs(diagonal.variance[:, 0] / mc.variance[:, 0] - 1)) > 0.2  # what the diagonal misses
    with pytest.raises(ValueError, match="covariance"):
        kd.predict_moments(model, x, covariance="full")


def test_regression_intervals_are_gaussian_at_any_level_and_tau_adds_noise():
    model = _mlp()
    x = np.random.default_rng(5).normal(size=(10, 6)).astype("float32")
    plain = kd.predict_moments(model, x)
    with_tau = kd.predict_moments(model, x, tau=4.0)
    np.testing.assert_allclose(with_tau.variance, plain.variance + 0.25, rtol=1e-6)
    lower, upper = plain.interval(0.9)
    np.testing.assert_allclose((upper - lower) / 2, 1.6448536 * plain.stddev, rtol=1e-5)


def test_a_layer_without_a_rule_after_the_noise_is_named_in_the_error():
    model = keras.Sequential(
        [keras.Input((8, 4)), kd.layers.MCDropout(0.2), keras.layers.LSTM(2, name="rnn"), keras.layers.Dense(1)]
    )
    with pytest.raises(ValueError, match=r"'rnn' \(LSTM\).*predict_mc"):
        kd.predict_moments(model, np.zeros((2, 8, 4), "float32"))


def test_a_subclass_that_computes_otherwise_gets_no_inherited_rule():
    class DoubledDense(keras.layers.Dense):
        def call(self, inputs):
            return 2.0 * super().call(inputs)

    model = keras.Sequential([keras.Input((4,)), kd.layers.MCDropout(0.2), DoubledDense(3, name="doubled")])
    with pytest.raises(ValueError, match=r"'doubled' \(DoubledDense\)"):
        kd.predict_moments(model, np.zeros((2, 4), "float32"))


def test_layers_upstream_of_the_noise_need_no_rule():
    # Embedding and max pooling run as they are: no noise reaches them.
    tokens = keras.Input((5,), dtype="int32")
    hidden = keras.layers.Embedding(20, 4)(tokens)
    hidden = keras.layers.MaxPooling1D(5)(hidden)
    hidden = keras.layers.Flatten()(hidden)
    hidden = kd.layers.MCDropout(0.3)(hidden)
    model = keras.Model(tokens, keras.layers.Dense(2)(hidden))
    x = np.random.default_rng(6).integers(0, 20, size=(50, 5)).astype("int32")
    moments = kd.predict_moments(model, x)
    mc = kd.predict_mc(model, x, 10_000, seed=0, verbose=0)
    np.testing.assert_allclose(moments.variance, mc.variance, rtol=0.1, atol=1e-6)  # exact up to MC error


def test_models_it_cannot_propagate_are_refused_clearly():
    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(1)
            self.dropout = kd.layers.MCDropout(0.2)

        def call(self, x):
            return self.dense(self.dropout(x))

    x = np.zeros((2, 3), "float32")
    with pytest.raises(ValueError, match="subclassed.*predict_mc"):
        kd.predict_moments(Subclassed(), x)
    plain = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match="nothing that samples"):
        kd.predict_moments(plain, x)
    with pytest.raises(ValueError, match="task"):
        kd.predict_moments(_mlp(), np.zeros((2, 6), "float32"), task="ranking")


# --- The `moments` serving signature -------------------------------------------


@pytest.mark.tf_only
@pytest.mark.parametrize("builder", [_mlp, _cnn])
def test_export_moments_signature_equals_predict_moments(tmp_path, builder):
    import tensorflow as tf

    model = builder()
    shape = tuple(model.inputs[0].shape[1:])
    x = np.random.default_rng(9).normal(size=(6,) + shape).astype("float32")
    path = kd.serving.export(model, str(tmp_path / "model"), moments=True)
    assert kd.serving.check(path) == []  # core ops only, no variable writes, warmup included
    signature = tf.saved_model.load(path).signatures["moments"]
    outputs = {name: value.numpy() for name, value in signature(**{model.inputs[0].name: tf.constant(x)}).items()}
    expected = kd.predict_moments(model, x)
    np.testing.assert_allclose(outputs["mean"], expected.mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(outputs["variance"], expected.variance, rtol=1e-4, atol=1e-7)
    if expected.task != "regression":
        np.testing.assert_allclose(outputs["mutual_information"], expected.mutual_information, rtol=1e-4, atol=1e-6)


# --- Review regressions: silent wrong answers that are now exact or refused --------


def test_a_branch_that_skips_the_dropout_keeps_its_own_moments():
    # Add(x, Dropout(x)): the dropout's moments must not overwrite its input's.
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Add()([inputs, keras.layers.Dropout(0.5)(inputs)]))
    x = np.ones((4, 3), "float32")
    moments = kd.predict_moments(model, x)
    np.testing.assert_allclose(moments.variance, 1.0, rtol=1e-6)  # Var(x z / 0.5) = 1 for x = 1
    np.testing.assert_allclose(moments.mean, 2.0, rtol=1e-6)


def test_noise_chain_covariance_matches_monte_carlo():
    # GaussianNoise -> Dense(8) -> alpha / Gaussian / Bernoulli dropout -> Dense(1): the
    # covariance updates of each noise layer, against 20,000 samples (5 standard errors).
    for noise in (keras.layers.AlphaDropout(0.2), keras.layers.GaussianDropout(0.3), kd.layers.MCDropout(0.3)):
        keras.utils.set_random_seed(4)
        model = keras.Sequential(
            [keras.Input((5,)), keras.layers.GaussianNoise(0.5), keras.layers.Dense(8), noise, keras.layers.Dense(1)]
        )
        x = np.random.default_rng(10).normal(size=(20, 5)).astype("float32")
        mc = kd.predict_mc(model, x, 20_000, seed=2, return_samples=True, verbose=0)
        samples = mc.samples[:, :, 0].astype("float64")
        centred = samples - samples.mean(1, keepdims=True)
        variance_se = np.sqrt((centred**4).mean(1) - samples.var(1) ** 2) / np.sqrt(samples.shape[1])
        got = kd.predict_moments(model, x).variance[:, 0]
        assert np.all(np.abs(got - mc.variance[:, 0]) <= MEAN_SE * variance_se + 1e-6), type(noise).__name__


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: [keras.layers.Embedding(10, 4, mask_zero=True), kd.layers.MCDropout(0.2), keras.layers.GlobalAveragePooling1D()], "masks"),
        (lambda: [keras.layers.Embedding(10, 4), kd.layers.MCDropout(0.2), keras.layers.Conv1D(2, 2, padding="causal")], "causal"),
        (lambda: [keras.layers.Embedding(10, 4), kd.layers.MCDropout(0.2), keras.layers.LayerNormalization(rms_scaling=True)], "RMS"),
        (lambda: [keras.layers.Embedding(10, 4), kd.layers.MCDropout(0.2), keras.layers.Softmax(axis=1)], "last axis"),
        (lambda: [keras.layers.Embedding(10, 4), kd.layers.MCDropout(0.2), keras.layers.Dense(2, activation=lambda t: t * 2)], "activation"),
    ],
)
def test_what_it_cannot_propagate_exactly_is_refused(build, message):
    model = keras.Sequential([keras.Input((5,), dtype="int32"), *build()])
    with pytest.raises(ValueError, match=message):
        kd.predict_moments(model, np.ones((2, 5), "int32"))


def test_a_quantized_dense_is_refused():
    model = keras.Sequential([keras.Input((4,)), kd.layers.MCDropout(0.2), keras.layers.Dense(3, name="q")])
    model.quantize("int8")
    with pytest.raises(ValueError, match="quantized layer 'q'"):
        kd.predict_moments(model, np.ones((2, 4), "float32"))


def test_a_relu_layer_as_an_activation_uses_its_own_rule():
    keras.utils.set_random_seed(5)
    model = keras.Sequential(
        [keras.Input((6,)), kd.layers.MCDropout(0.3), keras.layers.Dense(4, activation=keras.layers.ReLU(max_value=0.3))]
    )
    x = np.random.default_rng(11).normal(size=(10, 6)).astype("float32")
    mc = kd.predict_mc(model, x, 20_000, seed=0, verbose=0)
    moments = kd.predict_moments(model, x)
    # Capped ReLU by Gauss-Hermite on a few dropped inputs' sum: close, not exact.
    assert np.abs(moments.mean - mc.mean).max() < 0.05


def test_half_precision_models_propagate_in_float32():
    keras.config.set_dtype_policy("mixed_float16")
    try:
        keras.utils.set_random_seed(6)
        model = keras.Sequential(
            [keras.Input((4,)), keras.layers.Dense(8, activation="relu"), kd.layers.MCDropout(0.2),
             keras.layers.Dense(8, activation="relu"), keras.layers.LayerNormalization(), keras.layers.Dense(1)]
        )
    finally:
        keras.config.set_dtype_policy("float32")
    moments = kd.predict_moments(model, np.zeros((3, 4), "float32"))
    assert np.all(np.isfinite(moments.mean)) and np.all(np.isfinite(moments.variance))


def test_input_dropout_then_dense_relu_is_exact_by_drop_patterns():
    # A few inputs dropped at a low rate: the pre-activation is a mixture of drop patterns,
    # which the rule enumerates (a Gaussian would be biased); then a linear head. Against
    # predict_mc with 20,000 samples: within 5 standard errors, mean and variance.
    keras.utils.set_random_seed(7)
    model = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dropout(0.05), keras.layers.Dense(16, activation="relu"),
         keras.layers.Dropout(0.05), keras.layers.Dense(1)]
    )
    x = np.random.default_rng(12).normal(size=(30, 6)).astype("float32")
    mc = kd.predict_mc(model, x, 20_000, seed=3, return_samples=True, verbose=0)
    samples = mc.samples[:, :, 0].astype("float64")
    mean, variance, mean_se, variance_se = _statistics(samples.T)
    got = kd.predict_moments(model, x)
    assert np.all(np.abs(got.mean[:, 0] - mean) <= MEAN_SE * mean_se + 1e-6)
    assert np.all(np.abs(got.variance[:, 0] - variance) <= MEAN_SE * variance_se + 1e-7)
