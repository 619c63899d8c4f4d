"""`predict_mc` and `MCPrediction`: Monte Carlo inference on any Keras model.

Specification: DESIGN.md section 3 ("Sampling and MC inference").

Models are small and their layers named (sampling seeds are salted with layer
names); the models behind statistical checks are built under
`keras.utils.set_random_seed` and every `predict_mc` call has a seed, so each
check is a fixed computation whose tolerance (a few standard errors) says how
far it is from failing, not how often it would.
"""

import math

import numpy as np
import pytest

import keras
from keras import ops

import keras_dropout as kd
from keras_dropout import mc

BACKEND = keras.backend.backend()
jax_only = pytest.mark.skipif(BACKEND != "jax", reason="needs the JAX backend")

FEATURES = 5
ROWS = 6
# predict_mc pads a call's rows up to a power of two (compiled shapes are bucketed).
PADDED_ROWS = 8
NUM_SAMPLES = 40
SE_TOLERANCE = 5.0  # standard errors allowed between two estimates


# --- Helpers ----------------------------------------------------------------


class _BatchProbe(keras.layers.Layer):
    """Identity layer recording the batch size it sees each time it runs.

    Inside a traced function this is the static size at trace time (`None`
    if the trace left it open). Clear `batch_sizes` after building the
    model: building records symbolic sizes too.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.batch_sizes = []

    def call(self, inputs):
        self.batch_sizes.append(inputs.shape[0])
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape


def _x(rows=ROWS, features=FEATURES, seed=0):
    return np.random.default_rng(seed).normal(size=(rows, features)).astype("float32")


def _predict(model, x, num_samples=NUM_SAMPLES, **kwargs):
    kwargs.setdefault("seed", 0)
    kwargs.setdefault("verbose", 0)
    return kd.predict_mc(model, x, num_samples, **kwargs)


def _regressor(rate=0.3, outputs=2, activation=None, first=None):
    """Dense -> MCDropout -> Dense -> MCDropout -> Dense(outputs)."""
    keras.utils.set_random_seed(1)
    layers = [keras.Input((FEATURES,), name="x")]
    if first is not None:
        layers.append(first)
    layers += [
        keras.layers.Dense(16, activation="relu", name="hidden_1"),
        kd.layers.MCDropout(rate, name="dropout_1"),
        keras.layers.Dense(8, activation="relu", name="hidden_2"),
        kd.layers.MCDropout(rate, name="dropout_2"),
        keras.layers.Dense(outputs, activation=activation, name="head"),
    ]
    return keras.Sequential(layers, name="regressor")


def _classifier(classes=4, activation="softmax"):
    return _regressor(rate=0.5, outputs=classes, activation=activation)


def _stock_model():
    """A plain Keras model: Dense -> BatchNormalization -> Dropout -> Dense."""
    keras.utils.set_random_seed(2)
    model = keras.Sequential(
        [
            keras.Input((FEATURES,)),
            keras.layers.Dense(8, name="dense_in"),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.Dropout(0.5, name="dropout"),
            keras.layers.Dense(2, name="dense_out"),
        ],
        name="stock",
    )
    # Non-trivial BN statistics, so that any write to them would show.
    rng = np.random.default_rng(3)
    bn = model.get_layer("bn")
    bn.set_weights(
        [
            rng.uniform(0.5, 2.0, (8,)).astype("float32"),
            rng.normal(size=(8,)).astype("float32"),
            rng.normal(size=(8,)).astype("float32"),
            rng.uniform(0.5, 3.0, (8,)).astype("float32"),
        ]
    )
    return model


def _weight_bytes(model):
    return {v.path: np.asarray(v).tobytes() for v in model.weights}


def _two_input_model():
    """Inputs 'a' (5 features) and 'b' (3 features) -> one regression output."""
    keras.utils.set_random_seed(4)
    a = keras.Input((FEATURES,), name="a")
    b = keras.Input((3,), name="b")
    h = keras.layers.Concatenate(name="concat")([a, b])
    h = keras.layers.Dense(8, activation="relu", name="hidden")(h)
    h = kd.layers.MCDropout(0.5, name="dropout")(h)
    return keras.Model([a, b], keras.layers.Dense(1, name="y")(h), name="two_inputs")


def _two_output_model():
    """One trunk with dropout, a softmax head 'probs' and a linear head 'value'."""
    keras.utils.set_random_seed(5)
    x = keras.Input((FEATURES,), name="x")
    h = keras.layers.Dense(16, activation="relu", name="trunk")(x)
    h = kd.layers.MCDropout(0.5, name="dropout")(h)
    probs = keras.layers.Dense(3, activation="softmax", name="probs")(h)
    value = keras.layers.Dense(1, name="value")(h)
    return keras.Model(x, {"probs": probs, "value": value}, name="two_outputs")


def _softmax(logits):
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


# --- Models with probes: where the S-fold tiling starts ------------------------


def _probed_sequential():
    keras.utils.set_random_seed(6)
    before, after = _BatchProbe(name="before"), _BatchProbe(name="after")
    model = keras.Sequential(
        [
            keras.Input((FEATURES,)),
            before,
            keras.layers.Dense(8, activation="relu", name="hidden"),
            kd.layers.MCDropout(0.5, name="dropout"),
            after,
            keras.layers.Dense(2, name="head"),
        ]
    )
    return model, [before], after


def _probed_functional():
    keras.utils.set_random_seed(6)
    before, after = _BatchProbe(name="before"), _BatchProbe(name="after")
    x = keras.Input((FEATURES,))
    h = before(x)
    h = keras.layers.Dense(8, activation="relu", name="hidden")(h)
    skip = keras.layers.Dense(8, name="skip")(h)
    h = kd.layers.MCDropout(0.5, name="dropout")(h)
    h = after(h)
    h = keras.layers.Add(name="add")([h, skip])
    return keras.Model(x, keras.layers.Dense(2, name="head")(h)), [before], after


def _probed_nested():
    """The dropout lives in a Sequential nested inside a functional model."""
    keras.utils.set_random_seed(6)
    outer, inner, after = (
        _BatchProbe(name="outer_before"),
        _BatchProbe(name="inner_before"),
        _BatchProbe(name="after"),
    )
    block = keras.Sequential(
        [
            keras.Input((8,)),
            inner,
            keras.layers.Dense(8, name="inner_hidden"),
            kd.layers.MCDropout(0.5, name="inner_dropout"),
        ],
        name="block",
    )
    x = keras.Input((FEATURES,))
    h = outer(x)
    h = keras.layers.Dense(8, activation="relu", name="hidden")(h)
    h = block(h)
    h = after(h)
    return keras.Model(x, keras.layers.Dense(2, name="head")(h)), [outer, inner], after


PROBED_MODELS = {
    "sequential": _probed_sequential,
    "functional": _probed_functional,
    "nested": _probed_nested,
}


def _clear(probes):
    for probe in probes:
        probe.batch_sizes.clear()


@pytest.fixture(scope="module")
def regression_model():
    return _regressor()


# --- Reproducibility ----------------------------------------------------------


def test_same_seed_gives_identical_results(regression_model):
    model, x = regression_model, _x()
    first = _predict(model, x, seed=7, return_samples=True)
    second = _predict(model, x, seed=7, return_samples=True)
    np.testing.assert_array_equal(first.samples, second.samples)
    np.testing.assert_array_equal(first.mean, second.mean)
    np.testing.assert_array_equal(first.variance, second.variance)
    np.testing.assert_array_equal(first.interval(0.95)[0], second.interval(0.95)[0])


def test_different_seeds_give_different_samples(regression_model):
    model, x = regression_model, _x()
    first = _predict(model, x, seed=7, return_samples=True)
    second = _predict(model, x, seed=8, return_samples=True)
    assert not np.array_equal(first.samples, second.samples)
    assert not np.array_equal(first.mean, second.mean)


def test_identical_rows_get_independent_samples(regression_model):
    model = regression_model
    x = np.repeat(_x(rows=1), ROWS, axis=0)
    samples = _predict(model, x, return_samples=True).samples
    for row in range(1, ROWS):
        assert not np.array_equal(samples[0], samples[row])


def test_samples_of_one_row_differ_from_each_other(regression_model):
    samples = _predict(regression_model, _x(), return_samples=True).samples
    # Two dropout layers of 16 and 8 units: repeated masks would be rare.
    distinct = {sample.tobytes() for sample in samples[0]}
    assert len(distinct) > NUM_SAMPLES // 2


# --- Agreement with the naive sampled forward pass ---------------------------


def test_samples_match_naive_sampled_forward_passes_in_distribution(regression_model):
    num_samples = 2000
    model, x = regression_model, _x(rows=4)
    fast = _predict(model, x, num_samples, seed=11, return_samples=True).samples
    # The reference: one ordinary call on a batch holding each row S times,
    # with the global sampling switch on (masks from the layers' own state).
    with kd.sampling(seed=12):
        tiled = ops.convert_to_numpy(model(np.repeat(x, num_samples, axis=0)))
    naive = tiled.reshape(fast.shape)

    fast, naive = fast.astype("float64"), naive.astype("float64")
    mean_se = np.sqrt((fast.var(axis=1) + naive.var(axis=1)) / num_samples)
    np.testing.assert_array_less(
        np.abs(fast.mean(axis=1) - naive.mean(axis=1)), SE_TOLERANCE * mean_se
    )
    # Standard error of a sample variance: sqrt((m4 - var**2) / S).
    def variance_se2(s):
        centred = s - s.mean(axis=1, keepdims=True)
        return ((centred**4).mean(axis=1) - s.var(axis=1) ** 2) / num_samples

    var_se = np.sqrt(variance_se2(fast) + variance_se2(naive))
    np.testing.assert_array_less(
        np.abs(fast.var(axis=1) - naive.var(axis=1)), SE_TOLERANCE * var_se
    )


# --- Prefix reuse: layers before the first dropout run once per row -----------


@pytest.mark.parametrize("kind", sorted(PROBED_MODELS))
def test_layers_before_the_first_dropout_see_the_untiled_rows(kind):
    model, before, after = PROBED_MODELS[kind]()
    _clear(before + [after])
    _predict(model, _x(), num_samples=7)
    for probe in before:
        assert probe.batch_sizes and set(probe.batch_sizes) == {PADDED_ROWS}, probe.name


@pytest.mark.parametrize("kind", sorted(PROBED_MODELS))
def test_layers_after_the_first_dropout_see_rows_times_samples(kind):
    model, before, after = PROBED_MODELS[kind]()
    _clear(before + [after])
    result = _predict(model, _x(), num_samples=7)
    assert after.batch_sizes and set(after.batch_sizes) == {PADDED_ROWS * 7}
    assert result.mean.shape == (ROWS, 2)
    assert (result.variance > 0).all()


def test_model_whose_first_layer_is_a_dropout_samples_every_row():
    model = keras.Sequential(
        [
            keras.Input((FEATURES,)),
            kd.layers.MCDropout(0.5, name="input_dropout"),
            keras.layers.Dense(2, name="head"),
        ]
    )
    result = _predict(model, _x(), return_samples=True)
    assert result.samples.shape == (ROWS, NUM_SAMPLES, 2)
    assert (result.variance > 0).all()


# --- Stock Keras models ---------------------------------------------------------


def test_stock_dropout_model_samples_without_user_conversion():
    result = _predict(_stock_model(), _x())
    assert (result.variance > 0).all()


def test_stock_model_weights_and_batchnorm_statistics_stay_bitwise_untouched():
    model = _stock_model()
    before = _weight_bytes(model)
    _predict(model, _x())
    assert _weight_bytes(model) == before


def test_stock_model_is_sampled_in_place_and_left_unaltered():
    model = _stock_model()
    config_before = model.get_config()
    layers_before = list(model.layers)
    _predict(model, _x())
    assert model.get_config() == config_before
    assert list(model.layers) == layers_before
    assert type(model.get_layer("dropout")) is keras.layers.Dropout
    # Outside sampling the stock layer is Keras' own: inference is the identity.
    x = _x()
    np.testing.assert_array_equal(
        ops.convert_to_numpy(model(x)), ops.convert_to_numpy(model(x, training=False))
    )


# --- Inputs and outputs ----------------------------------------------------------


def _two_inputs(rows=ROWS):
    return _x(rows), _x(rows, features=3, seed=1)


def test_multi_input_model_accepts_a_list_of_arrays():
    a, b = _two_inputs()
    result = _predict(_two_input_model(), [a, b], return_samples=True)
    assert result.samples.shape == (ROWS, NUM_SAMPLES, 1)
    assert (result.variance > 0).all()


def test_dict_inputs_by_name_match_list_inputs():
    model = _two_input_model()
    a, b = _two_inputs()
    from_list = _predict(model, [a, b], return_samples=True)
    from_dict = _predict(model, {"b": b, "a": a}, return_samples=True)
    np.testing.assert_array_equal(from_dict.samples, from_list.samples)


def test_multi_output_model_returns_a_prediction_per_output_name():
    model = _two_output_model()
    result = _predict(model, _x(), return_samples=True)
    assert isinstance(result, dict)
    assert sorted(result) == sorted(model.output_names) == ["probs", "value"]
    assert result["probs"].task == "classification"
    assert result["probs"].mean.shape == (ROWS, 3)
    assert result["probs"].mutual_information.shape == (ROWS,)
    assert result["value"].task == "regression"
    assert result["value"].samples.shape == (ROWS, NUM_SAMPLES, 1)


@pytest.mark.parametrize("with_targets", [False, True], ids=["inputs", "inputs_targets"])
def test_dataset_in_one_batch_gives_the_same_results_as_the_array(
    regression_model, with_targets
):
    tf = pytest.importorskip("tensorflow")  # tf.data works on every backend

    model, x = regression_model, _x()
    elements = (x, np.zeros((ROWS, 1), "float32")) if with_targets else x
    # One batch holding every row: predict_mc then chunks the rows exactly as
    # it chunks the array, so the same seed draws the same masks.
    dataset = tf.data.Dataset.from_tensor_slices(elements).batch(ROWS + 2)
    from_array = _predict(model, x, return_samples=True)
    from_dataset = _predict(model, dataset, return_samples=True)
    np.testing.assert_array_equal(from_dataset.samples, from_array.samples)


def test_dataset_in_several_batches_keeps_row_order():
    tf = pytest.importorskip("tensorflow")  # tf.data works on every backend

    # Output = input times a scaled Bernoulli mask: its mean is the input.
    model = keras.Sequential([keras.Input((1,)), kd.layers.MCDropout(0.5, name="dropout")])
    x = (2.0 ** np.arange(10)).astype("float32")[:, None]
    # Batches of 3 are chunked apart from each other, so the masks differ
    # from those of the array: only the distribution and the order hold.
    dataset = tf.data.Dataset.from_tensor_slices(x).batch(3)
    result = _predict(model, dataset, num_samples=400)
    assert result.mean.shape == (10, 1)
    # Each row has mean x and standard deviation x; rows differ by a factor 2.
    np.testing.assert_array_less(
        np.abs(result.mean - x), SE_TOLERANCE * x / math.sqrt(400)
    )


# --- Classification -------------------------------------------------------------


@pytest.fixture(scope="module")
def softmax_prediction():
    return _predict(_classifier(classes=4), _x(), return_samples=True)


def test_auto_task_of_a_softmax_output_is_classification(softmax_prediction):
    assert softmax_prediction.task == "classification"


def test_softmax_mean_probabilities_sum_to_one(softmax_prediction):
    np.testing.assert_allclose(softmax_prediction.mean.sum(axis=-1), 1.0, atol=1e-5)


def test_mutual_information_is_nonnegative(softmax_prediction):
    assert (softmax_prediction.mutual_information >= 0).all()
    assert (softmax_prediction.mutual_information > 0).any()


def test_mutual_information_is_predictive_minus_expected_entropy(softmax_prediction):
    p = softmax_prediction
    np.testing.assert_allclose(
        p.mutual_information, p.predictive_entropy - p.expected_entropy, atol=1e-5
    )


def test_entropies_match_numpy_on_the_returned_samples(softmax_prediction):
    samples = softmax_prediction.samples.astype("float64")
    mean = samples.mean(axis=1)
    expected_entropy = -(samples * np.log(samples)).sum(axis=-1).mean(axis=1)
    np.testing.assert_allclose(
        softmax_prediction.predictive_entropy,
        -(mean * np.log(mean)).sum(axis=-1),
        rtol=1e-4,
    )
    np.testing.assert_allclose(
        softmax_prediction.expected_entropy, expected_entropy, rtol=1e-4
    )


def test_variation_ratio_lies_in_zero_to_one_minus_one_over_classes(softmax_prediction):
    ratio = softmax_prediction.variation_ratio
    assert ratio.shape == (ROWS,)
    assert (ratio >= 0).all() and (ratio <= 1 - 1 / 4 + 1e-6).all()


def test_variation_ratio_is_one_minus_modal_vote_share(softmax_prediction):
    votes = softmax_prediction.samples.argmax(axis=-1)  # (rows, samples)
    modal = np.array([np.bincount(row, minlength=4).max() for row in votes])
    np.testing.assert_allclose(
        softmax_prediction.variation_ratio, 1 - modal / NUM_SAMPLES, atol=1e-6
    )


def test_softmax_at_the_end_of_a_nested_head_model_is_classification():
    head = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(3, activation="softmax", name="probs")],
        name="head",
    )
    model = keras.Sequential(
        [
            keras.Input((FEATURES,)),
            keras.layers.Dense(8, name="hidden"),
            kd.layers.MCDropout(0.5, name="dropout"),
            head,
        ]
    )
    result = _predict(model, _x())
    assert result.task == "classification"
    assert result.mutual_information.shape == (ROWS,)


def test_single_sigmoid_unit_is_binary_with_per_label_measures():
    result = _predict(_classifier(classes=1, activation="sigmoid"), _x())
    assert result.task == "multilabel"
    assert result.mean.shape == (ROWS, 1)
    for name in ("predictive_entropy", "expected_entropy", "mutual_information", "variation_ratio"):
        assert getattr(result, name).shape == (ROWS, 1), name
    assert (result.variation_ratio <= 0.5 + 1e-6).all()


def test_several_sigmoid_units_give_per_label_measures():
    result = _predict(_classifier(classes=3, activation="sigmoid"), _x())
    assert result.task == "multilabel"
    for name in ("predictive_entropy", "expected_entropy", "mutual_information", "variation_ratio"):
        assert getattr(result, name).shape == (ROWS, 3), name
    # Independent labels: the mean probabilities need not sum to 1.
    assert not np.allclose(result.mean.sum(axis=-1), 1.0)


def test_from_logits_averages_softmax_probabilities_not_logits():
    model, x = _classifier(classes=4, activation=None), _x()
    # Same seed, same masks: the raw logits of the same samples.
    logits = _predict(model, x, task="regression", return_samples=True).samples
    result = _predict(model, x, from_logits=True, return_samples=True)
    assert result.task == "classification"
    probs = _softmax(logits.astype("float64"))
    np.testing.assert_allclose(result.mean, probs.mean(axis=1), rtol=1e-5, atol=1e-6)
    # The returned samples are the per-sample probabilities.
    np.testing.assert_allclose(result.samples, probs, rtol=1e-5, atol=1e-6)
    # Averaging logits first would give a different (overconfident) answer.
    assert not np.allclose(result.mean, _softmax(logits.mean(axis=1)), atol=1e-3)


def test_from_logits_with_one_unit_applies_a_sigmoid():
    model, x = _classifier(classes=1, activation=None), _x()
    logits = _predict(model, x, task="regression", return_samples=True).samples
    result = _predict(model, x, from_logits=True)
    assert result.task == "multilabel"
    expected = (1 / (1 + np.exp(-logits.astype("float64")))).mean(axis=1)
    np.testing.assert_allclose(result.mean, expected, rtol=1e-5, atol=1e-6)


# --- Regression: variance, tau, intervals ----------------------------------------


def test_auto_task_of_a_linear_output_is_regression(regression_model):
    assert _predict(regression_model, _x()).task == "regression"


def test_variance_is_the_ddof0_variance_of_the_samples(regression_model):
    result = _predict(regression_model, _x(), return_samples=True)
    np.testing.assert_allclose(
        result.variance, result.samples.astype("float64").var(axis=1, ddof=0), rtol=1e-5
    )
    np.testing.assert_allclose(result.mean, result.samples.mean(axis=1), rtol=1e-5, atol=1e-6)


def test_stddev_is_the_square_root_of_variance(regression_model):
    result = _predict(regression_model, _x(), tau=2.0)
    np.testing.assert_array_equal(result.stddev, np.sqrt(result.variance))


def test_tau_adds_its_inverse_to_the_variance(regression_model):
    plain = _predict(regression_model, _x())
    with_tau = _predict(regression_model, _x(), tau=4.0)
    np.testing.assert_allclose(with_tau.variance, plain.variance + 0.25, rtol=1e-6)
    np.testing.assert_array_equal(with_tau.mean, plain.mean)


def test_interval_matches_numpy_quantiles_of_the_samples(regression_model):
    result = _predict(regression_model, _x(), return_samples=True)
    lower, upper = result.interval(0.95)
    expected = np.quantile(result.samples.astype("float64"), [0.025, 0.975], axis=1)
    np.testing.assert_allclose(lower, expected[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(upper, expected[1], rtol=1e-5, atol=1e-6)


def test_interval_computed_without_samples_matches_the_samples(regression_model):
    kept = _predict(regression_model, _x(), return_samples=True)
    lean = _predict(regression_model, _x())
    assert lean.samples is None
    np.testing.assert_array_equal(lean.interval(0.95)[0], kept.interval(0.95)[0])
    np.testing.assert_array_equal(lean.interval(0.95)[1], kept.interval(0.95)[1])


def test_interval_at_an_uncomputed_level_without_samples_raises(regression_model):
    result = _predict(regression_model, _x())
    with pytest.raises(ValueError, match=r"level=0\.8.*interval_levels"):
        result.interval(0.8)


def test_interval_at_any_level_when_samples_are_returned(regression_model):
    result = _predict(regression_model, _x(), return_samples=True)
    lower, upper = result.interval(0.8)
    expected = np.quantile(result.samples.astype("float64"), [0.1, 0.9], axis=1)
    np.testing.assert_allclose(lower, expected[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(upper, expected[1], rtol=1e-5, atol=1e-6)


def test_interval_levels_argument_computes_every_level(regression_model):
    result = _predict(regression_model, _x(), interval_levels=(0.5, 0.9))
    kept = _predict(regression_model, _x(), return_samples=True)
    for level in (0.5, 0.9):
        lower, upper = result.interval(level)
        expected = np.quantile(
            kept.samples.astype("float64"), [(1 - level) / 2, (1 + level) / 2], axis=1
        )
        np.testing.assert_allclose(lower, expected[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(upper, expected[1], rtol=1e-5, atol=1e-6)
        assert (lower <= upper).all()
    with pytest.raises(ValueError, match="interval_levels"):
        result.interval(0.95)


def test_regression_prediction_refuses_classification_measures(regression_model):
    result = _predict(regression_model, _x())
    with pytest.raises(ValueError, match="regression"):
        result.mutual_information


# --- The memory knob ---------------------------------------------------------------


def test_samples_are_split_across_calls_when_they_exceed_chunk_size():
    model, before, after = _probed_sequential()
    _clear(before + [after])
    result = _predict(model, _x(), num_samples=200, chunk_size=64, return_samples=True)
    assert result.samples.shape == (ROWS, 200, 2)
    assert result.mean.shape == result.variance.shape == (ROWS, 2)
    assert (result.variance > 0).all()
    np.testing.assert_allclose(result.mean, result.samples.mean(axis=1), rtol=1e-5, atol=1e-6)
    # Every call drew fresh masks: the 64-sample blocks are not repeats.
    assert not np.array_equal(result.samples[:, :64], result.samples[:, 64:128])
    assert max(after.batch_sizes) <= 64


def test_large_requests_are_split_into_calls_of_at_most_chunk_size_rows():
    # 128 rows x 1000 samples = 128,000 forward passes, never more than
    # chunk_size of them in one call.
    model, before, after = _probed_sequential()
    _clear(before + [after])
    result = _predict(model, _x(rows=128), num_samples=1000, chunk_size=4096)
    assert result.mean.shape == (128, 2)
    assert None not in after.batch_sizes
    assert max(after.batch_sizes) <= 4096
    # Whole rows per call: 4 rows x 1000 samples.
    assert set(before[0].batch_sizes) == {4}


# --- Bad input --------------------------------------------------------------------------


@pytest.mark.parametrize("num_samples", [0, -1, 2.5, True, "10", 10**7])
def test_invalid_num_samples_raises(regression_model, num_samples):
    with pytest.raises(ValueError, match="num_samples"):
        kd.predict_mc(regression_model, _x(), num_samples, verbose=0)


def test_wrong_feature_dimension_raises(regression_model):
    with pytest.raises(ValueError, match=r"shape \(6, 4\)"):
        _predict(regression_model, _x(features=4))


def test_nan_input_raises(regression_model):
    x = _x()
    x[2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        _predict(regression_model, x)


def test_input_without_rows_raises(regression_model):
    with pytest.raises(ValueError, match="at least one row"):
        _predict(regression_model, _x(rows=0))


def test_wrong_number_of_inputs_raises():
    with pytest.raises(ValueError, match=r"expects 2 input\(s\), received 1"):
        _predict(_two_input_model(), [_x()])


def test_missing_named_input_raises():
    a, _ = _two_inputs()
    with pytest.raises(ValueError, match=r"Missing input\(s\) \['b'\]"):
        _predict(_two_input_model(), {"a": a})


def test_unknown_input_name_raises():
    a, b = _two_inputs()
    with pytest.raises(ValueError, match="Unexpected input 'c'"):
        _predict(_two_input_model(), {"a": a, "c": b})


def test_classification_task_on_a_linear_output_without_from_logits_raises(regression_model):
    with pytest.raises(ValueError, match="from_logits=True"):
        _predict(regression_model, _x(), task="classification")


def test_model_without_a_stochastic_layer_raises():
    model = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="has nothing that samples"):
        _predict(model, _x())


def test_model_whose_only_dropout_has_rate_zero_raises():
    model = keras.Sequential(
        [keras.Input((FEATURES,)), keras.layers.Dropout(0.0), keras.layers.Dense(2)]
    )
    with pytest.raises(ValueError, match="has nothing that samples"):
        _predict(model, _x())


@pytest.mark.parametrize("tau", [0, 0.0, -1.0, float("nan"), float("inf")])
def test_invalid_tau_raises(regression_model, tau):
    with pytest.raises(ValueError, match="tau"):
        _predict(regression_model, _x(), tau=tau)


def test_invalid_task_raises(regression_model):
    with pytest.raises(ValueError, match="task"):
        _predict(regression_model, _x(), task="segmentation")


# --- Compilation ------------------------------------------------------------------------


def test_jit_compile_true_and_false_give_the_same_samples_for_a_seed(regression_model):
    # TensorFlow: an XLA-compiled tf.function against a plain graph; JAX: a
    # jax.jit-compiled sampler against eager execution.
    model, x = regression_model, _x()
    compiled = _predict(model, x, return_samples=True, jit_compile=True)
    plain = _predict(model, x, return_samples=True, jit_compile=False)
    np.testing.assert_allclose(compiled.samples, plain.samples, rtol=1e-5, atol=1e-6)
    assert (compiled.variance > 0).all()


@jax_only
def test_default_jit_compile_runs_the_sampler_under_jax_jit():
    import jax

    traced = []

    class _TracerProbe(keras.layers.Layer):
        def call(self, inputs):
            traced.append(isinstance(inputs, jax.core.Tracer))
            return inputs

    model = keras.Sequential(
        [
            keras.Input((FEATURES,)),
            kd.layers.MCDropout(0.5, name="dropout"),
            _TracerProbe(name="tracer_probe"),
        ]
    )
    traced.clear()
    result = _predict(model, _x())
    assert traced and all(traced)
    assert (result.variance > 0).all()


def test_results_for_a_seed_do_not_depend_on_batch_size_or_chunk_size():
    # Masks are keyed by (seed, layer, global row, global sample), not by the
    # position of a row in the chunk that happens to carry it.
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(16),
            kd.layers.MCDropout(0.3),
            kd.layers.DropConnectDense(8, 0.2),
            kd.layers.MCGaussianNoise(0.1),
            keras.layers.Dense(2),
        ]
    )
    x = np.random.default_rng(0).normal(size=(37, 6)).astype("float32")
    reference = kd.predict_mc(model, x, num_samples=20, seed=5, return_samples=True).samples
    for options in ({"chunk_size": 60, "batch_size": 7}, {"chunk_size": 7}, {"batch_size": 1}):
        samples = kd.predict_mc(model, x, num_samples=20, seed=5, return_samples=True, **options).samples
        np.testing.assert_allclose(samples, reference, rtol=1e-5, atol=1e-6, err_msg=str(options))


def _bucket_model():
    keras.utils.set_random_seed(1)
    return keras.Sequential(
        [keras.Input((5,)), keras.layers.Dense(8), kd.layers.MCDropout(0.4), keras.layers.Dense(2)]
    )


def test_results_are_identical_across_bucket_boundaries():
    # Rows pad up to power-of-two buckets; a row's draws depend on its id, not on the padding.
    model = _bucket_model()
    x = np.random.default_rng(3).normal(size=(40, 5)).astype("float32")
    reference = kd.predict_mc(model, x, num_samples=6, seed=2, return_samples=True).samples
    for rows in (15, 16, 17, 31, 32, 33):
        samples = kd.predict_mc(model, x[:rows], num_samples=6, seed=2, return_samples=True).samples
        np.testing.assert_allclose(samples, reference[:rows], rtol=1e-5, atol=1e-6, err_msg=str(rows))


@pytest.mark.tf_only
def test_new_row_counts_within_a_bucket_do_not_retrace(caplog, monkeypatch):
    import logging

    model = _bucket_model()
    x = np.random.default_rng(4).normal(size=(64, 5)).astype("float32")
    kd.predict_mc(model, x[:40], num_samples=4, seed=0)  # traces (and compiles) the 64-row bucket
    traces = []
    original = mc.sample_chunk
    # The compiled function calls `sample_chunk` only while it traces.
    monkeypatch.setattr(mc, "sample_chunk", lambda *args: traces.append(1) or original(*args))
    with caplog.at_level(logging.WARNING):
        for rows in range(33, 64, 3):
            kd.predict_mc(model, x[:rows], num_samples=4, seed=0)
    assert traces == []
    assert not [r for r in caplog.records if "retracing" in r.getMessage()]


class _FakeClock:
    """Stands in for `time` in keras_dropout.mc: each sampler call takes what it is told."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now


def _fake_timed_paths(monkeypatch, seconds_per_call):
    """Makes each (real) sampler call take `seconds_per_call[xla]` on a fake
    clock; returns the list the calls' paths (True = XLA) are appended to."""
    clock = _FakeClock()
    paths = []
    real = mc._run_sampler

    def timed(model, xla, *args):
        paths.append(xla)
        clock.now += seconds_per_call[xla]
        return real(model, xla, *args)

    monkeypatch.setattr(mc, "time", clock)
    monkeypatch.setattr(mc, "_run_sampler", timed)
    return paths


@pytest.mark.tf_only
@pytest.mark.parametrize("faster", ["xla", "graph"])
def test_auto_times_the_graph_and_xla_then_keeps_the_faster(monkeypatch, capsys, faster):
    # A fake clock decides which path "is faster", so the test is not a timing;
    # the sampler calls themselves are real.
    model = _bucket_model()
    x = np.random.default_rng(5).normal(size=(64, 5)).astype("float32")
    paths = _fake_timed_paths(monkeypatch, {faster == "xla": 1.0, faster != "xla": 3.0})
    # chunk_size 16 at S=4: 4 rows a call, 16 calls.
    first = kd.predict_mc(model, x, 4, seed=1, chunk_size=16, return_samples=True)
    assert set(paths) == {False, True}  # both were timed...
    (trial,) = mc._path_trials[model].values()
    assert trial.choice == faster
    decided_at = len(paths) - paths[::-1].index(True)  # ...then the choice sticks
    assert set(paths[decided_at:]) <= {faster == "xla"}
    paths.clear()
    second = kd.predict_mc(model, x, 4, seed=1, chunk_size=16, return_samples=True)
    assert set(paths) == {faster == "xla"}
    kd.predict_mc(model, x, 4, seed=1, chunk_size=16, verbose=1)
    expected = "XLA (measured: XLA 0.33x" if faster == "xla" else "graph (measured: XLA 3.00x"
    assert expected in capsys.readouterr().out
    # Both paths draw the same masks: the measuring changes no result.
    monkeypatch.undo()
    reference = kd.predict_mc(model, x, 4, seed=1, chunk_size=16, jit_compile=False, return_samples=True)
    for result in (first, second):
        np.testing.assert_allclose(result.samples, reference.samples, rtol=1e-5, atol=1e-6)


@pytest.mark.tf_only
def test_auto_does_not_compile_for_xla_when_the_work_is_too_small_to_repay_it(monkeypatch):
    model = _bucket_model()
    paths = _fake_timed_paths(monkeypatch, {False: 1.0, True: 1.0})
    kd.predict_mc(model, _x(), 4, seed=0)  # one call: nothing to gain from compiling
    kd.predict_mc(model, _x(), 4, seed=0)
    assert paths == [False, False]


@pytest.mark.parametrize("jit_compile", [False, True, "auto"])
def test_predict_mc_keeps_no_model_alive(jit_compile):
    # Compiled functions and path trials are cached under the model, weakly.
    import gc
    import weakref

    model = _bucket_model()
    kd.predict_mc(model, _x(), 4, seed=0, jit_compile=jit_compile)
    alive = weakref.ref(model)
    del model
    gc.collect()
    assert alive() is None
