"""Heteroscedastic regression (issue 14): GaussianHead, GaussianNLL, the aleatoric/epistemic split.

Every statistic is checked against what it is defined to be, computed by hand
from the per-sample means and variances the same seed gives (`return_samples`);
intervals against the mixture's CDF; the losses against the Gaussian density in
float64; the split on data with a known noise variance in tests/test_examples.py.
"""

import math

import keras
import numpy as np
import pytest
from keras import ops

import keras_dropout as kd

FEATURES = 3


def _x(rows=7, seed=0):
    return np.random.default_rng(seed).normal(size=(rows, FEATURES)).astype("float32")


def _hidden(inputs, rate=0.3):
    h = keras.layers.Dense(16, activation="relu", kernel_initializer=keras.initializers.GlorotUniform(1))(inputs)
    return kd.layers.MCDropout(rate)(h)


def _head_model(units=2):
    inputs = keras.Input((FEATURES,), name="x")
    return keras.Model(inputs, kd.layers.GaussianHead(units, kernel_initializer=keras.initializers.GlorotUniform(2))(_hidden(inputs)))


def _two_head_model(as_dict=True, variance_activation=None):
    inputs = keras.Input((FEATURES,), name="x")
    h = _hidden(inputs)
    mu = keras.layers.Dense(2, name="mu", kernel_initializer=keras.initializers.GlorotUniform(3))(h)
    spread = keras.layers.Dense(
        2, name="spread", activation=variance_activation, kernel_initializer=keras.initializers.GlorotUniform(4)
    )(h)
    return keras.Model(inputs, {"mu": mu, "spread": spread} if as_dict else [mu, spread])


def _numpy(x):
    return np.asarray(ops.convert_to_numpy(x))


# --- GaussianHead ---------------------------------------------------------------


def test_gaussian_head_outputs_means_then_floored_softplus_variances():
    head = kd.layers.GaussianHead(3, min_variance=1e-3)
    x = _x()
    outputs = _numpy(head(x))
    kernel, bias = _numpy(head.kernel), _numpy(head.bias)
    z = x.astype("float64") @ kernel + bias
    assert outputs.shape == (7, 6)
    np.testing.assert_allclose(outputs[:, :3], z[:, :3], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(outputs[:, 3:], np.logaddexp(0.0, z[:, 3:]) + 1e-3, rtol=1e-5)
    # The floor holds where softplus underflows.
    head.bias.assign(np.array([0, 0, 0, -200, -200, -200], "float32"))
    assert (_numpy(head(x))[:, 3:] >= 1e-3).all()
    assert head.compute_output_shape((None, 5, 4)) == (None, 5, 6)


def test_gaussian_head_round_trips_through_config_and_keras_file(tmp_path):
    model = _head_model()
    restored = kd.layers.GaussianHead.from_config(model.layers[-1].get_config())
    assert (restored.units, restored.min_variance) == (2, 1e-6)
    path = str(tmp_path / "head.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    x = _x()
    np.testing.assert_allclose(_numpy(loaded(x)), _numpy(model(x)), rtol=1e-6)
    assert isinstance(loaded.layers[-1], kd.layers.GaussianHead)


@pytest.mark.parametrize(
    "kwargs, argument",
    [({"units": 0}, "units"), ({"units": 2.5}, "units"), ({"units": True}, "units"),
     ({"units": 1, "min_variance": 0.0}, "min_variance"), ({"units": 1, "min_variance": -1.0}, "min_variance"),
     ({"units": 1, "min_variance": float("nan")}, "min_variance"), ({"units": 1, "min_variance": "1e-6"}, "min_variance")],
)
def test_gaussian_head_refuses_bad_arguments(kwargs, argument):
    with pytest.raises(ValueError, match=f"`{argument}`"):
        kd.layers.GaussianHead(**kwargs)


def test_gaussian_head_under_mixed_precision_returns_float32():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        head = kd.layers.GaussianHead(1, min_variance=1e-7)
        head.build((None, 4))
        head.bias.assign(np.array([0.0, -30.0], "float32"))  # softplus(-30) ~ 9e-14: 0 in float16
        outputs = head(np.ones((2, 4), "float32"))
        assert keras.backend.standardize_dtype(outputs.dtype) == "float32"
        assert (_numpy(outputs)[:, 1] > 0).all()
    finally:
        keras.config.set_dtype_policy(previous)


# --- GaussianNLL ------------------------------------------------------------------


def _reference_nll(y, mean, variance):
    return np.sum(0.5 * np.log(2 * np.pi * variance) + 0.5 * (y - mean) ** 2 / variance, axis=-1)


def test_gaussian_nll_is_the_gaussian_negative_log_density():
    rng = np.random.default_rng(0)
    y, mean = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    variance = rng.uniform(0.01, 4.0, size=(5, 3))
    expected = _reference_nll(y, mean, variance)
    # float64 stays float64 on TensorFlow; JAX without x64 computes float32: float32 tolerances.
    by_variance = _numpy(kd.losses.gaussian_nll(y, np.concatenate([mean, variance], -1)))
    by_log = _numpy(kd.losses.gaussian_nll(y, np.concatenate([mean, np.log(variance)], -1), variance_kind="log"))
    np.testing.assert_allclose(by_variance, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(by_log, expected, rtol=1e-5, atol=1e-6)
    loss = kd.losses.GaussianNLL()(y.astype("float32"), np.concatenate([mean, variance], -1).astype("float32"))
    np.testing.assert_allclose(float(loss), expected.mean(), rtol=1e-5)
    # (batch,) targets for a one-unit head.
    np.testing.assert_allclose(
        _numpy(kd.losses.gaussian_nll(y[:, 0], np.stack([mean[:, 0], variance[:, 0]], -1))),
        _reference_nll(y[:, :1], mean[:, :1], variance[:, :1]),
        rtol=1e-5, atol=1e-6,
    )


def test_gaussian_nll_stays_finite_with_float32_under_mixed_precision():
    # float16 predictions: the loss is computed in float32, so 1e-6 variances do not round to 0.
    y = np.array([[0.5]], "float16")
    y_pred = np.array([[0.5, 1e-6]], "float16")
    value = kd.losses.GaussianNLL()(y, y_pred)
    assert keras.backend.standardize_dtype(value.dtype) == "float32"
    assert math.isfinite(float(value))
    # Extreme log-variances: exp(-s) is taken, never log(exp(s)).
    extreme = _numpy(kd.losses.gaussian_nll(np.zeros((2, 1), "float32"), np.array([[0.0, 80.0], [1.0, -80.0]], "float32"), "log"))
    assert np.isfinite(extreme).all() and extreme[0] == pytest.approx(40.0 + 0.5 * math.log(2 * math.pi), rel=1e-5)


def test_gaussian_nll_refuses_mismatched_shapes_and_kinds():
    with pytest.raises(ValueError, match="2 \\* units"):
        kd.losses.gaussian_nll(np.zeros((2, 1)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="units=2"):
        kd.losses.gaussian_nll(np.zeros((2, 3)), np.ones((2, 4)))
    with pytest.raises(ValueError, match="variance_kind"):
        kd.losses.GaussianNLL(variance_kind="std")
    restored = kd.losses.GaussianNLL.from_config(kd.losses.GaussianNLL(variance_kind="log").get_config())
    assert restored.variance_kind == "log"


def test_training_with_gaussian_nll_learns_the_noise_level():
    # y = x + noise with stddev 0.5: the head's variance should reach about 0.25.
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(2048, 1)).astype("float32")
    y = (x + 0.5 * rng.normal(size=x.shape)).astype("float32")
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(16, activation="relu"), kd.layers.GaussianHead(1)])
    model.compile(keras.optimizers.Adam(1e-2), loss=kd.losses.GaussianNLL())
    model.fit(x, y, epochs=15, batch_size=128, verbose=0)
    variance = _numpy(model(x[:256]))[:, 1]
    assert 0.18 < np.median(variance) < 0.33


# --- predict_mc: the split ------------------------------------------------------------


def test_predict_mc_splits_a_gaussian_head_into_aleatoric_and_epistemic():
    model, x = _head_model(), _x()
    result = kd.predict_mc(model, x, num_samples=64, seed=5, return_samples=True, interval_levels=(0.9,))
    means, variances = result.samples, result.sample_variances
    assert means.shape == variances.shape == (7, 64, 2) and (variances > 0).all()
    np.testing.assert_allclose(result.mean, means.mean(axis=1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.aleatoric_variance, variances.mean(axis=1), rtol=1e-5)
    np.testing.assert_allclose(result.epistemic_variance, means.var(axis=1), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(result.variance, result.aleatoric_variance + result.epistemic_variance, rtol=1e-6)
    assert result.task == "regression" and "gaussian=True" in repr(result)
    # The samples are the model's own outputs under those masks: rows of one draw are
    # (means, variances) of one GaussianHead call.
    with_tau = kd.predict_mc(model, x, num_samples=64, seed=5, tau=4.0)
    np.testing.assert_allclose(with_tau.variance, result.variance + 0.25, rtol=1e-5)
    np.testing.assert_allclose(with_tau.aleatoric_variance, result.aleatoric_variance, rtol=1e-6)
    # Intervals are the mixture's: its CDF at the bounds is 0.05 and 0.95.
    from scipy.stats import norm

    for bound, level in zip(result.interval(0.9), (0.05, 0.95)):
        cdf = norm.cdf((bound[:, None] - means) / np.sqrt(variances)).mean(axis=1)
        np.testing.assert_allclose(cdf, level, atol=2e-5)
    lower, upper = result.interval(0.5)  # any level from the kept samples
    cdf = norm.cdf((upper[:, None] - means) / np.sqrt(variances)).mean(axis=1)
    np.testing.assert_allclose(cdf, 0.75, atol=2e-5)
    assert (lower < upper).all()


def test_mixture_interval_covers_draws_from_the_mixture():
    # Statistical: 20,000 draws from a fixed mixture; each bound's coverage within 5 binomial SEs.
    rng = np.random.default_rng(3)
    means = rng.normal(size=(4, 30, 1)) * 2
    variances = rng.uniform(0.05, 1.5, size=(4, 30, 1))
    lower, upper = (_numpy(b) for b in kd.uncertainty.gaussian_mixture_interval(means, variances, 0.8))
    draws = 20_000
    component = rng.integers(0, 30, size=(4, draws))
    rows = np.arange(4)[:, None]
    y = means[rows, component, 0] + np.sqrt(variances[rows, component, 0]) * rng.normal(size=(4, draws))
    se = math.sqrt(0.1 * 0.9 / draws)
    assert np.all(np.abs((y < lower).mean(axis=1) - 0.1) < 5 * se)
    assert np.all(np.abs((y > upper).mean(axis=1) - 0.1) < 5 * se)


@pytest.mark.parametrize("as_dict", [True, False])
def test_a_stock_two_head_model_with_a_log_variance_output(as_dict):
    model, x = _two_head_model(as_dict), _x()
    plain = kd.predict_mc(model, x, num_samples=40, seed=2, return_samples=True)
    names = list(plain)
    mean_name, spread_name = names[0], names[1]
    result = kd.predict_mc(model, x, num_samples=40, seed=2, variance_output=spread_name, return_samples=True)
    assert isinstance(result, kd.MCPrediction)  # the pair is one prediction
    variances = np.exp(plain[spread_name].samples)
    np.testing.assert_allclose(result.mean, plain[mean_name].mean, rtol=1e-6)
    np.testing.assert_allclose(result.aleatoric_variance, variances.mean(axis=1), rtol=1e-5)
    np.testing.assert_allclose(result.epistemic_variance, plain[mean_name].variance, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(result.sample_variances, variances, rtol=1e-5)
    as_mapping = kd.predict_mc(model, x, num_samples=40, seed=2, variance_output={mean_name: spread_name})
    np.testing.assert_allclose(as_mapping.variance, result.variance, rtol=1e-6)


def test_a_stock_two_head_model_with_a_variance_output():
    model, x = _two_head_model(variance_activation="softplus"), _x()
    plain = kd.predict_mc(model, x, num_samples=30, seed=1, return_samples=True)
    result = kd.predict_mc(model, x, num_samples=30, seed=1, variance_output="spread", variance_kind="variance")
    np.testing.assert_allclose(result.aleatoric_variance, plain["spread"].samples.mean(axis=1), rtol=1e-5)
    np.testing.assert_allclose(result.variance, plain["spread"].mean + plain["mu"].variance, rtol=1e-5)


def test_several_pairs_and_plain_outputs_are_reported_by_name():
    inputs = keras.Input((FEATURES,), name="x")
    h = _hidden(inputs)
    outputs = {
        "a": keras.layers.Dense(1)(h),
        "a_log_var": keras.layers.Dense(1)(h),
        "b": keras.layers.Dense(1)(h),
        "b_log_var": keras.layers.Dense(1)(h),
        "label": keras.layers.Dense(3, activation="softmax")(h),
        "head": kd.layers.GaussianHead(1)(h),
    }
    model = keras.Model(inputs, outputs)
    result = kd.predict_mc(model, _x(), num_samples=10, seed=0, variance_output={"a": "a_log_var", "b": "b_log_var"})
    assert sorted(result) == ["a", "b", "head", "label"]
    for name in ("a", "b", "head"):
        assert result[name].aleatoric_variance.shape == (7, 1)
    assert result["label"].mutual_information.shape == (7,)


def test_plain_outputs_have_an_epistemic_variance_but_no_aleatoric_one():
    model = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(8), keras.layers.Dropout(0.5), keras.layers.Dense(1)])
    result = kd.predict_mc(model, _x(), num_samples=20, seed=0, tau=2.0)
    np.testing.assert_allclose(result.epistemic_variance + 0.5, result.variance, rtol=1e-6)
    with pytest.raises(ValueError, match="GaussianHead"):
        result.aleatoric_variance
    classifier = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dropout(0.5), keras.layers.Dense(3, activation="softmax")])
    probabilities = kd.predict_mc(classifier, _x(), num_samples=5, seed=0)
    with pytest.raises(ValueError, match="expected_entropy"):
        probabilities.aleatoric_variance
    with pytest.raises(ValueError, match="mutual_information"):
        probabilities.epistemic_variance


def test_bad_variance_arguments_are_refused_clearly():
    model, x = _two_head_model(), _x()
    cases = [
        ({"variance_output": "nope"}, "outputs \\['mu', 'spread'\\]"),
        ({"variance_output": 3}, "Expected an output name"),
        ({"variance_kind": "log"}, "variance_output=None"),
        ({"variance_output": "spread", "variance_kind": "std"}, "variance_kind"),
        ({"variance_output": {"mu": "mu"}}, "each output is a mean or a variance"),
        ({"variance_output": {"mu": "x"}}, "not outputs"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            kd.predict_mc(model, x, num_samples=2, **kwargs)
    # A linear output named as a variance has negative values: refused, not averaged.
    with pytest.raises(ValueError, match="holds negative values"):
        kd.predict_mc(model, x, num_samples=5, variance_output="spread", variance_kind="variance")


def test_models_whose_outputs_cannot_pair_are_refused():
    inputs = keras.Input((FEATURES,), name="x")
    h = _hidden(inputs)
    three = keras.Model(inputs, [keras.layers.Dense(1)(h), keras.layers.Dense(1)(h), keras.layers.Dense(1, name="v")(h)])
    with pytest.raises(ValueError, match="Pass a dict"):
        kd.predict_mc(three, _x(), num_samples=2, variance_output="v")
    mismatched = keras.Model(inputs, {"mu": keras.layers.Dense(2)(h), "v": keras.layers.Dense(1)(h)})
    with pytest.raises(ValueError, match="must have the shape"):
        kd.predict_mc(mismatched, _x(), num_samples=2, variance_output="v")
    classes = keras.Model(inputs, {"p": keras.layers.Dense(1, activation="sigmoid")(h), "v": keras.layers.Dense(1)(h)})
    with pytest.raises(ValueError, match="classification output"):
        kd.predict_mc(classes, _x(), num_samples=2, variance_output="v")
    # A GaussianHead used inside (a latent Gaussian): its outputs are reported as plain ones, said in a warning.
    buried = keras.Model(inputs, keras.layers.Dense(1)(kd.layers.GaussianHead(2)(h)))
    with pytest.warns(UserWarning, match="do not produce a model output directly"):
        plain = kd.predict_mc(buried, _x(), num_samples=2)
    with pytest.raises(ValueError, match="GaussianHead"):
        plain.aleatoric_variance
    with pytest.raises(ValueError, match="a Gaussian output is regression"):
        kd.predict_mc(_head_model(), _x(), num_samples=2, task="classification")
    head_pair = keras.Model(inputs, {"g": kd.layers.GaussianHead(1)(h), "v": keras.layers.Dense(2)(h)})
    with pytest.raises(ValueError, match="predicts its own variance"):
        kd.predict_mc(head_pair, _x(), num_samples=2, variance_output="g")


def test_a_subclassed_model_ending_in_a_gaussian_head():
    class Regressor(keras.Model):
        def __init__(self):
            super().__init__()
            self.hidden = keras.layers.Dense(8, activation="relu")
            self.dropout = kd.layers.MCDropout(0.3)
            self.head = kd.layers.GaussianHead(1)

        def call(self, inputs):
            return self.head(self.dropout(self.hidden(inputs)))

    result = kd.predict_mc(Regressor(), _x(), num_samples=16, seed=0, return_samples=True)
    assert result.mean.shape == (7, 1)
    np.testing.assert_allclose(result.aleatoric_variance, result.sample_variances.mean(axis=1), rtol=1e-5)


class _Returns(keras.Model):
    """Dense -> MCDropout -> GaussianHead(2), plus a Dense(4), returning what `mode` says."""

    def __init__(self, mode):
        super().__init__()
        self.mode = mode
        self.hidden = keras.layers.Dense(8, activation="relu")
        self.dropout = kd.layers.MCDropout(0.3)
        self.head = kd.layers.GaussianHead(2)
        self.other = keras.layers.Dense(4)

    def call(self, inputs):
        h = self.dropout(self.hidden(inputs))
        g = self.head(h)
        return {
            "list": lambda: [self.other(h), g],
            "dict": lambda: {"b": g, "a": self.other(h)},
            "computed": lambda: g * 2.0 - 1.0,
            "after": lambda: self.other(g),
        }[self.mode]()


@pytest.mark.parametrize("mode", ["list", "dict", "computed", "after"])
def test_a_subclassed_model_not_returning_its_gaussian_head_alone_is_refused(mode):
    with pytest.raises(ValueError, match="does not return its output alone"):
        kd.predict_mc(_Returns(mode), _x(), num_samples=4)


def test_time_distributed_gaussian_head_is_recognised():
    inputs = keras.Input((5, FEATURES))
    h = kd.layers.MCDropout(0.3)(keras.layers.Dense(8, activation="relu")(inputs))
    model = keras.Model(inputs, keras.layers.TimeDistributed(kd.layers.GaussianHead(1))(h))
    x = np.random.default_rng(0).normal(size=(3, 5, FEATURES)).astype("float32")
    result = kd.predict_mc(model, x, num_samples=8, seed=0, return_samples=True)
    assert result.mean.shape == (3, 5, 1)
    np.testing.assert_allclose(result.aleatoric_variance, result.sample_variances.mean(axis=1), rtol=1e-5)


def test_a_float16_log_variance_does_not_overflow_under_mixed_precision():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        inputs = keras.Input((FEATURES,), name="x")
        h = _hidden(inputs)
        log_var = keras.layers.Dense(1, name="log_var", bias_initializer=keras.initializers.Constant(12.0),
                                     kernel_initializer="zeros")(h)
        model = keras.Model(inputs, {"mu": keras.layers.Dense(1, name="mu")(h), "log_var": log_var})
        result = kd.predict_mc(model, _x(), num_samples=4, seed=0, variance_output="log_var")
    finally:
        keras.config.set_dtype_policy(previous)
    # exp(12) = 162755 overflows float16 (max 65504); computed in float32 it does not.
    np.testing.assert_allclose(result.aleatoric_variance, math.exp(12.0), rtol=1e-2)


def test_same_seed_same_split_whatever_the_batching():
    model, x = _head_model(), _x(40)
    first = kd.predict_mc(model, x, num_samples=24, seed=9, jit_compile=False)
    second = kd.predict_mc(model, x, num_samples=24, seed=9, batch_size=3, chunk_size=20, jit_compile=False)
    np.testing.assert_allclose(first.aleatoric_variance, second.aleatoric_variance, rtol=1e-6)
    np.testing.assert_allclose(first.epistemic_variance, second.epistemic_variance, rtol=1e-5, atol=1e-9)


def test_mixture_interval_refuses_malformed_variances():
    means = np.zeros((2, 3, 2))
    with pytest.raises(ValueError, match="shape of `samples`"):
        kd.uncertainty.gaussian_mixture_interval(means, np.ones((2, 3, 1)))
    for bad in (-1.0, np.inf, np.nan):
        with pytest.raises(ValueError, match="finite variances >= 0"):
            kd.uncertainty.gaussian_mixture_interval(means, np.full((2, 3, 2), bad))
    with pytest.raises(ValueError, match="level"):
        kd.uncertainty.gaussian_mixture_interval(means, np.ones((2, 3, 2)), level=1.0)


# --- metrics -----------------------------------------------------------------------


def test_mixture_log_likelihood_accepts_per_sample_variances():
    from scipy.stats import norm

    rng = np.random.default_rng(0)
    y = rng.normal(size=6)
    means, variances = rng.normal(size=(6, 9)), rng.uniform(0.1, 2.0, size=(6, 9))
    expected = np.log(norm.pdf(y[:, None], means, np.sqrt(variances)).mean(axis=1))
    np.testing.assert_allclose(kd.metrics.gaussian_mixture_log_likelihood(y, means, variances=variances), expected, rtol=1e-10)
    with_tau = np.log(norm.pdf(y[:, None], means, np.sqrt(variances + 0.5)).mean(axis=1))
    np.testing.assert_allclose(kd.metrics.gaussian_mixture_log_likelihood(y, means, 2.0, variances=variances), with_tau, rtol=1e-10)
    # Equal variances 1/tau: the homoscedastic formula.
    np.testing.assert_allclose(
        kd.metrics.gaussian_mixture_log_likelihood(y, means, variances=np.full_like(means, 0.25)),
        kd.metrics.gaussian_mixture_log_likelihood(y, means, 4.0),
        rtol=1e-10,
    )
    with pytest.raises(ValueError, match="pass `tau`"):
        kd.metrics.gaussian_mixture_log_likelihood(y, means)
    with pytest.raises(ValueError, match="shape of `samples`"):
        kd.metrics.gaussian_mixture_log_likelihood(y, means, variances=variances[:, :3])
    with pytest.raises(ValueError, match="values > 0"):
        kd.metrics.gaussian_mixture_log_likelihood(y, means, variances=np.zeros_like(means))
    with pytest.raises(ValueError, match="variances"):
        kd.metrics.gaussian_mixture_log_likelihood(y, means, variances=np.full_like(means, np.nan))


# --- predict_moments -------------------------------------------------------------------


def test_predict_moments_splits_like_predict_mc():
    model, x = _head_model(1), _x(12)
    mc = kd.predict_mc(model, x, num_samples=20_000, seed=0)
    moments = kd.predict_moments(model, x)
    np.testing.assert_allclose(moments.mean, mc.mean, atol=0.03)
    np.testing.assert_allclose(moments.aleatoric_variance, mc.aleatoric_variance, rtol=0.05)
    np.testing.assert_allclose(moments.epistemic_variance, mc.epistemic_variance, rtol=0.35, atol=1e-3)
    np.testing.assert_allclose(moments.variance, moments.aleatoric_variance + moments.epistemic_variance, rtol=1e-6)
    two_head = _two_head_model()
    mc_pair = kd.predict_mc(two_head, x, num_samples=20_000, seed=0, variance_output="spread")
    moment_pair = kd.predict_moments(two_head, x, variance_output="spread")
    np.testing.assert_allclose(moment_pair.aleatoric_variance, mc_pair.aleatoric_variance, rtol=0.1)
    np.testing.assert_allclose(moment_pair.epistemic_variance, mc_pair.epistemic_variance, rtol=0.35, atol=1e-3)


def test_predict_moments_is_exact_for_a_gaussian_head_after_input_dropout():
    # Input dropout (rate 0.1, 6 inputs) then the head: the pre-activation is a mixture over
    # drop patterns, enumerated through both halves (softplus included): exact up to the
    # patterns of 5-6 drops it leaves out (5e-5 of the probability).
    rate = 0.1
    inputs = keras.Input((6,))
    head = kd.layers.GaussianHead(1, kernel_initializer=keras.initializers.RandomNormal(stddev=1.5, seed=0))
    model = keras.Model(inputs, head(kd.layers.MCDropout(rate)(inputs)))
    x = np.random.default_rng(1).normal(size=(8, 6)).astype("float32")
    kernel, bias = _numpy(head.kernel).astype("float64"), _numpy(head.bias).astype("float64")
    kept = np.array([[(p >> i) & 1 for i in range(6)] for p in range(64)], "float64")
    weights = np.prod(np.where(kept == 1, 1 - rate, rate), axis=1)
    z = np.einsum("pi,ri,io->rpo", kept, x.astype("float64") / (1 - rate), kernel) + bias  # (rows, P, 2)
    mean = np.einsum("p,rp->r", weights, z[..., 0])
    epistemic = np.einsum("p,rp->r", weights, z[..., 0] ** 2) - mean**2
    aleatoric = np.einsum("p,rp->r", weights, np.logaddexp(0.0, z[..., 1]) + 1e-6)
    moments = kd.predict_moments(model, x)
    np.testing.assert_allclose(moments.mean[:, 0], mean, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(moments.epistemic_variance[:, 0], epistemic, rtol=2e-3)
    np.testing.assert_allclose(moments.aleatoric_variance[:, 0], aleatoric, rtol=1e-3, atol=1e-4)


# --- Serving signatures ------------------------------------------------------------------


@pytest.mark.tf_only
def test_exported_signatures_return_the_split_and_match_predict_mc(tmp_path):
    import tensorflow as tf

    model, x = _head_model(), _x(5)
    path = kd.serving.export(model, str(tmp_path / "head"), num_samples=16, moments=True)
    assert kd.serving.check(path) == []
    loaded = tf.saved_model.load(path)
    name = model.inputs[0].name
    outputs = loaded.signatures["mc_sample"](
        **{name: tf.constant(x)}, num_samples=tf.constant(16, tf.int32), seed=tf.constant(11, tf.int64)
    )
    expected = kd.predict_mc(model, x, num_samples=16, seed=11)
    assert set(outputs) == {"mean", "variance", "stddev", "aleatoric_variance", "epistemic_variance"}
    for key in ("mean", "variance", "aleatoric_variance", "epistemic_variance"):
        np.testing.assert_allclose(outputs[key].numpy(), getattr(expected, key), rtol=1e-4, atol=1e-7)
    single = loaded.signatures["mc_sample"](**{name: tf.constant(x)}, num_samples=tf.constant(0, tf.int32), seed=tf.constant(0, tf.int64))
    np.testing.assert_allclose(single["epistemic_variance"].numpy(), 0.0)
    np.testing.assert_allclose(single["aleatoric_variance"].numpy(), _numpy(model(x))[:, 2:], rtol=1e-5)
    mc = loaded.signatures["mc"](**{name: tf.constant(x)})
    assert set(mc) == set(outputs)
    moments = loaded.signatures["moments"](**{name: tf.constant(x)})
    expected_moments = kd.predict_moments(model, x)
    np.testing.assert_allclose(moments["aleatoric_variance"].numpy(), expected_moments.aleatoric_variance, rtol=1e-4)
    np.testing.assert_allclose(moments["epistemic_variance"].numpy(), expected_moments.epistemic_variance, rtol=1e-4, atol=1e-8)


@pytest.mark.tf_only
def test_a_two_head_export_pairs_its_outputs(tmp_path):
    import tensorflow as tf

    model, x = _two_head_model(variance_activation="softplus"), _x(4)
    path = kd.serving.export(model, str(tmp_path / "pair"), variance_output="spread", variance_kind="variance")
    loaded = tf.saved_model.load(path)
    name = model.inputs[0].name
    outputs = loaded.signatures["mc_sample"](
        **{name: tf.constant(x)}, num_samples=tf.constant(8, tf.int32), seed=tf.constant(3, tf.int64)
    )
    expected = kd.predict_mc(model, x, num_samples=8, seed=3, variance_output="spread", variance_kind="variance")
    np.testing.assert_allclose(outputs["aleatoric_variance"].numpy(), expected.aleatoric_variance, rtol=1e-4)
    assert set(loaded.signatures["serving_default"](**{name: tf.constant(x)})) == {"mu", "spread"}
    # A linear "variance" output goes negative: the signature refuses it, as predict_mc does.
    linear = _two_head_model()
    bad = kd.serving.export(linear, str(tmp_path / "linear"), variance_output="spread", variance_kind="variance", warmup=False)
    with pytest.raises(tf.errors.InvalidArgumentError, match="holds negative values"):
        tf.saved_model.load(bad).signatures["mc"](x=tf.constant(x))
    # The moments signature refuses it too, as predict_moments does.
    with pytest.raises(ValueError, match="negative"):
        kd.predict_moments(linear, x * 100, variance_output="spread", variance_kind="variance")
    moments_path = kd.serving.export(
        linear, str(tmp_path / "linear_moments"), variance_output="spread", variance_kind="variance",
        warmup=False, moments=True,
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match="holds negative values"):
        tf.saved_model.load(moments_path).signatures["moments"](x=tf.constant(x * 100))


@pytest.mark.tf_only
def test_cli_export_takes_the_variance_flags(tmp_path, capsys):
    import tensorflow as tf

    from keras_dropout.cli import main

    model = _two_head_model()
    path = str(tmp_path / "pair.keras")
    model.save(path)
    assert main(["export", path, str(tmp_path / "served"), "--variance_output", "spread", "--variance_kind", "log"]) == 0
    version = capsys.readouterr().out.strip().splitlines()[-1]
    outputs = tf.saved_model.load(version).signatures["mc"](x=tf.constant(_x(3)))
    assert {"aleatoric_variance", "epistemic_variance"} <= set(outputs)
    assert main(["export", path, str(tmp_path / "bad"), "--variance_output", "nope"]) == 2
    assert "variance_output" in capsys.readouterr().err


@pytest.mark.tf_only
def test_beam_handler_returns_the_split_per_example(tmp_path):
    beam = pytest.importorskip("apache_beam")
    from apache_beam.ml.inference.base import RunInference

    from keras_dropout.beam import MCModelHandler

    model, x = _head_model(), _x(6)
    path = str(tmp_path / "head.keras")
    model.save(path)
    handler = MCModelHandler(path, 16, seed=4, outputs=("mean", "aleatoric_variance", "epistemic_variance"))
    import glob
    import json

    prefix = str(tmp_path / "scores")
    with beam.Pipeline() as pipeline:
        _ = (
            pipeline
            | beam.Create([(key, x[key]) for key in range(6)])
            | RunInference(handler)
            | beam.Map(lambda kv: json.dumps([kv[0], {k: v.tolist() for k, v in kv[1].inference.items()}]))
            | beam.io.WriteToText(prefix)
        )
    found = dict(json.loads(line) for name in glob.glob(prefix + "*") for line in open(name))
    expected = kd.predict_mc(model, x, num_samples=16, seed=4, row_ids=np.arange(6))
    for key, inference in found.items():
        np.testing.assert_allclose(inference["aleatoric_variance"], expected.aleatoric_variance[key], rtol=1e-4)
        np.testing.assert_allclose(inference["epistemic_variance"], expected.epistemic_variance[key], rtol=1e-3, atol=1e-8)
    assert len(found) == 6


def test_a_compiled_model_loads_in_a_fresh_process_after_import_keras_dropout(tmp_path):
    import subprocess
    import sys

    model = _head_model()
    model.compile("adam", loss=kd.losses.GaussianNLL(variance_kind="variance"))
    path = str(tmp_path / "compiled.keras")
    model.save(path)
    script = (
        "import keras, keras_dropout as kd\n"
        f"model = keras.saving.load_model({path!r})\n"
        "assert type(model.loss).__name__ == 'GaussianNLL', model.loss\n"
        "print(type(model.layers[-1]).__name__)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("GaussianHead")
