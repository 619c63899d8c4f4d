"""keras_dropout.masks: determinism, backend/compiler independence and randomness quality.

Statistical checks use fixed seeds and bounds that a good generator passes by
a wide margin (4 to 5 sigma, chi-square at p = 1e-6), so they never flake yet
catch a broken hash, a biased conversion or correlated streams.
"""

import math

import keras
import numpy as np
import pytest
from keras import ops

from keras_dropout import masks

from layer_harness import to_numpy

N = 2**20

tf_only = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="needs the TensorFlow backend"
)
jax_only = pytest.mark.skipif(keras.backend.backend() != "jax", reason="needs the JAX backend")

try:
    from scipy.stats import chi2 as _chi2

    # Chi-square critical value, 255 degrees of freedom, p = 1e-6.
    CHI2_CRITICAL_255 = float(_chi2.isf(1e-6, 255))
except ImportError:  # pragma: no cover - scipy is in the test extra
    # scipy.stats.chi2.isf(1e-6, 255) = 377.078...
    CHI2_CRITICAL_255 = 377.078


# Every implementation this backend has: the hash everywhere, Philox on TF.
IMPLEMENTATIONS = ["hash"] + (["philox"] if keras.backend.backend() == "tensorflow" else [])


def _draws(seed, implementation="hash"):
    """Every drawing function of the module, for one seed."""
    shape = (64, 33)
    return {
        "random_bits": masks.random_bits(shape, seed),
        "uniform": masks.uniform(shape, seed, implementation=implementation),
        "normal": masks.normal(shape, seed, implementation=implementation),
        "keep_mask": masks.keep_mask(shape, 0.3, seed, implementation=implementation),
        "fold_in": masks.fold_in(seed, 12345),
    }


# ---------------------------------------------------------------------------
# make_seed and fold_in


def test_make_seed_returns_a_uint32_pair():
    seed = masks.make_seed(42)
    assert tuple(seed.shape) == (2,)
    assert keras.backend.standardize_dtype(seed.dtype) == "uint32"


def test_make_seed_is_deterministic():
    np.testing.assert_array_equal(to_numpy(masks.make_seed(42)), to_numpy(masks.make_seed(42)))
    np.testing.assert_array_equal(
        to_numpy(masks.make_seed(1, 2, 3)), to_numpy(masks.make_seed(1, 2, 3))
    )


def test_make_seed_depends_on_every_value_and_their_order():
    seeds = {
        tuple(to_numpy(masks.make_seed(*values)).tolist())
        for values in [(0,), (1,), (2,), (1, 2), (2, 1), (1, 2, 3), (0, 0)]
    }
    assert len(seeds) == 7


@pytest.mark.filterwarnings("ignore:Explicitly requested dtype int64")  # JAX without x64
def test_make_seed_gives_the_same_seed_for_python_ints_and_integer_tensors():
    expected = to_numpy(masks.make_seed(7, 123456))
    for dtype in ["int32", "int64", "uint32"]:
        values = [ops.convert_to_tensor(7, dtype), ops.convert_to_tensor(123456, dtype)]
        np.testing.assert_array_equal(to_numpy(masks.make_seed(*values)), expected)


def test_make_seed_keeps_the_low_32_bits():
    np.testing.assert_array_equal(
        to_numpy(masks.make_seed(2**32 + 5)), to_numpy(masks.make_seed(5))
    )
    np.testing.assert_array_equal(
        to_numpy(masks.make_seed(-1)), to_numpy(masks.make_seed(0xFFFFFFFF))
    )
    np.testing.assert_array_equal(
        to_numpy(masks.make_seed(ops.convert_to_tensor(-1, "int32"))),
        to_numpy(masks.make_seed(0xFFFFFFFF)),
    )


def test_make_seed_without_values_is_refused():
    with pytest.raises(ValueError, match="at least one"):
        masks.make_seed()


def test_fold_in_is_deterministic():
    seed = masks.make_seed(3)
    np.testing.assert_array_equal(
        to_numpy(masks.fold_in(seed, 9)), to_numpy(masks.fold_in(seed, 9))
    )


def test_fold_in_gives_distinct_children_for_distinct_values_and_parents():
    children = set()
    for parent in range(2):
        seed = masks.make_seed(parent)
        for value in range(24):
            children.add(tuple(to_numpy(masks.fold_in(seed, value)).tolist()))
    assert len(children) == 2 * 24


def test_fold_in_accepts_a_signed_seed_and_a_tensor_value():
    seed = masks.make_seed(3)
    expected = to_numpy(masks.fold_in(seed, 9))
    signed = ops.convert_to_tensor(to_numpy(seed).astype("int64"))
    np.testing.assert_array_equal(to_numpy(masks.fold_in(signed, 9)), expected)
    value = ops.convert_to_tensor(9, "int32")
    np.testing.assert_array_equal(to_numpy(masks.fold_in(seed, value)), expected)


def test_fold_in_children_draw_uncorrelated_masks():
    seed = masks.make_seed(4)
    first = to_numpy(masks.keep_mask((N,), 0.5, masks.fold_in(seed, 0)))
    second = to_numpy(masks.keep_mask((N,), 0.5, masks.fold_in(seed, 1)))
    r = np.corrcoef(first, second)[0, 1]
    assert abs(r) < 4 / math.sqrt(N), r


# ---------------------------------------------------------------------------
# Determinism, eagerly and compiled.


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_draws_are_deterministic_for_a_seed(implementation):
    first = _draws(masks.make_seed(5), implementation)
    second = _draws(masks.make_seed(5), implementation)
    for name in first:
        np.testing.assert_array_equal(to_numpy(first[name]), to_numpy(second[name]), name)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_draws_differ_between_seeds(implementation):
    first = _draws(masks.make_seed(5), implementation)
    second = _draws(masks.make_seed(6), implementation)
    for name in ["random_bits", "uniform", "normal", "keep_mask", "fold_in"]:
        assert not np.array_equal(to_numpy(first[name]), to_numpy(second[name])), name


def test_random_bits_of_a_shape_are_the_flat_draw_reshaped():
    # The counter is the flat element index: a reshape does not change the stream.
    seed = masks.make_seed(8)
    flat = to_numpy(masks.random_bits((6 * 35,), seed))
    shaped = to_numpy(masks.random_bits((6, 5, 7), seed))
    np.testing.assert_array_equal(shaped.ravel(), flat)


def _assert_same_draws(actual, expected):
    """Bits, uniforms, masks and seeds identical; normals to float32 rounding.

    `normal` goes through `erfinv`, whose float32 implementation differs by an
    ulp or two between TensorFlow's kernel and XLA's; its input bits are equal.
    """
    for name, value in expected.items():
        if name == "normal":
            np.testing.assert_allclose(to_numpy(actual[name]), value, rtol=1e-5, atol=1e-6)
        else:
            np.testing.assert_array_equal(to_numpy(actual[name]), value, name)


def test_draws_match_golden_values_on_every_backend():
    # Computed once; identical under TensorFlow and JAX, eager and compiled.
    seed = masks.make_seed(0)
    assert to_numpy(seed).tolist() == [2771022307, 2741140403]
    assert to_numpy(masks.fold_in(seed, 1)).tolist() == [829778112, 1790439106]
    assert to_numpy(masks.random_bits((8,), seed)).tolist() == [
        1499944341, 3994625262, 1187970317, 3219870459,
        525456213, 35103411, 2248595593, 1942333697,
    ]  # fmt: skip
    expected_uniform = ((np.array([1499944341, 3994625262]) >> 9) + 0.5) / 2**23
    np.testing.assert_array_equal(
        to_numpy(masks.uniform((2,), seed, implementation="hash")),
        expected_uniform.astype("float32"),
    )


@tf_only
@pytest.mark.parametrize("jit_compile", [False, True], ids=["tf_function", "xla"])
def test_draws_are_identical_eagerly_in_tf_function_and_under_xla(jit_compile):
    import tensorflow as tf

    eager = {name: to_numpy(value) for name, value in _draws(masks.make_seed(11, 12)).items()}

    @tf.function(jit_compile=jit_compile)
    def compiled(a, b):
        return _draws(masks.make_seed(a, b))

    _assert_same_draws(compiled(tf.constant(11), tf.constant(12)), eager)


@tf_only
@pytest.mark.parametrize("jit_compile", [False, True], ids=["tf_function", "xla"])
def test_draws_with_a_dynamic_shape_match_the_static_ones(jit_compile):
    import tensorflow as tf

    seed = masks.make_seed(13)
    expected_bits = to_numpy(masks.random_bits((40, 3), seed))
    expected_mask = to_numpy(masks.keep_mask((40, 3), 0.4, seed, implementation="hash"))

    @tf.function(
        jit_compile=jit_compile,
        input_signature=[tf.TensorSpec((None, 3), tf.float32), tf.TensorSpec((2,), tf.uint32)],
    )
    def compiled(x, seed):
        shape = ops.shape(x)
        return masks.random_bits(shape, seed), masks.keep_mask(shape, 0.4, seed, implementation="hash")

    bits, mask = compiled(tf.zeros((40, 3)), seed)
    np.testing.assert_array_equal(bits.numpy(), expected_bits)
    np.testing.assert_array_equal(mask.numpy(), expected_mask)


@tf_only
@pytest.mark.parametrize("static", [True, False], ids=["static_shape", "dynamic_shape"])
def test_auto_draws_philox_eagerly_and_in_graphs_and_the_hash_under_xla(static):
    import tensorflow as tf

    seed = masks.make_seed(14)
    shape = (41, 3)  # an odd element count exercises the 16-bit packing's tail
    philox = to_numpy(masks.keep_mask(shape, 0.4, seed, implementation="philox"))
    hashed = to_numpy(masks.keep_mask(shape, 0.4, seed, implementation="hash"))
    assert not np.array_equal(philox, hashed)
    np.testing.assert_array_equal(to_numpy(masks.keep_mask(shape, 0.4, seed)), philox)
    spec = tf.TensorSpec(shape if static else (None, 3), tf.float32)
    for jit_compile, expected in ((False, philox), (True, hashed)):
        compiled = tf.function(
            lambda x: masks.keep_mask(ops.shape(x), 0.4, seed),
            jit_compile=jit_compile,
            input_signature=[spec],
        )
        np.testing.assert_array_equal(compiled(tf.zeros(shape)).numpy(), expected)


def test_per_row_seeds_make_a_row_independent_of_its_batch():
    seeds = masks.fold_in(masks.make_seed(15), ops.arange(6, dtype="int32"))  # (6, 2)
    whole = to_numpy(masks.keep_mask((6, 50), 0.5, seeds))
    rows_2_to_4 = to_numpy(masks.keep_mask((3, 50), 0.5, seeds[2:5]))
    np.testing.assert_array_equal(whole[2:5], rows_2_to_4)
    assert not np.array_equal(whole[0], whole[1])


@pytest.mark.parametrize("shape", [(12, 12, 32), (12, 5, 12), (4, 4), (7, 3, 7)])
def test_per_row_seeds_key_each_row_when_the_row_count_equals_another_dimension(shape):
    # keras.ops.add on TensorFlow turned `bits + key` into a bias_add along the
    # wrong axis when the row count matched a static dimension (a keras_hub BERT
    # at 3 rows x 4 samples = its 12 tokens drew other rows' masks).
    seeds = masks.fold_in(masks.make_seed(16), ops.arange(shape[0], dtype="int32"))
    whole = to_numpy(masks.random_bits(shape, seeds))
    for row in range(shape[0]):
        alone = to_numpy(masks.random_bits((1,) + shape[1:], seeds[row : row + 1]))
        np.testing.assert_array_equal(whole[row], alone[0], err_msg=f"row {row}")


@tf_only
@pytest.mark.parametrize("jit_compile", [False, True], ids=["tf_function", "xla"])
def test_per_row_draws_in_static_graphs_match_dynamic_ones_whatever_the_row_count(jit_compile):
    import tensorflow as tf

    for rows in (11, 12, 13, 32):
        seeds = masks.fold_in(masks.make_seed(17), ops.arange(rows, dtype="int32"))
        draws = {}
        for batch in (rows, None):
            compiled = tf.function(
                lambda s: masks.random_bits((tf.shape(s)[0], 12, 32), s),
                jit_compile=jit_compile,
                input_signature=[tf.TensorSpec((batch, 2), tf.uint32)],
            )
            draws[batch] = compiled(seeds).numpy()
        np.testing.assert_array_equal(draws[rows], draws[None], err_msg=f"rows={rows}")


def test_philox_implementation_is_refused_where_it_does_not_exist():
    if keras.backend.backend() == "tensorflow":
        seeds = masks.fold_in(masks.make_seed(1), ops.arange(2, dtype="int32"))
        with pytest.raises(ValueError, match="implementation='philox'"):
            masks.keep_mask((2, 3), 0.5, seeds, implementation="philox")
    else:
        with pytest.raises(ValueError, match="implementation='philox'"):
            masks.keep_mask((2, 3), 0.5, masks.make_seed(1), implementation="philox")
    with pytest.raises(ValueError, match="`implementation`"):
        masks.keep_mask((2, 3), 0.5, masks.make_seed(1), implementation="mersenne")


@jax_only
def test_draws_are_identical_eagerly_and_under_jax_jit():
    import jax

    eager = {name: to_numpy(value) for name, value in _draws(masks.make_seed(11, 12)).items()}
    _assert_same_draws(jax.jit(lambda a, b: _draws(masks.make_seed(a, b)))(11, 12), eager)


# ---------------------------------------------------------------------------
# Distributions.


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_uniform_lies_in_the_open_unit_interval_with_mean_half_and_variance_twelfth(implementation):
    u = to_numpy(masks.uniform((N,), masks.make_seed(21), implementation=implementation))
    u = u.astype(np.float64)
    assert u.min() > 0 and u.max() < 1
    # Var of the sample mean = (1/12) / n; of the sample variance = (1/80 - 1/144) / n.
    assert abs(u.mean() - 0.5) < 4 * math.sqrt(1 / 12 / N)
    assert abs(u.var() - 1 / 12) < 4 * math.sqrt((1 / 80 - 1 / 144) / N)


def test_uniform_stays_below_one_when_the_top_bits_are_all_ones():
    # A draw whose top 24 bits are all ones: converting it naively to
    # float32 rounds up to exactly 1.0 (and normal() to inf). make_seed(3)
    # is the first seed whose first 2**22 draws hold one.
    size = 2**22
    seed = masks.make_seed(3)
    bits = to_numpy(masks.random_bits((size,), seed))
    extremes = np.flatnonzero((bits >> 8) == 0xFFFFFF)
    assert extremes.size, "the pinned seed no longer draws 24 leading one bits"
    u = to_numpy(masks.uniform((size,), seed, implementation="hash"))
    z = to_numpy(masks.normal((size,), seed, implementation="hash"))
    assert u[extremes].max() < 1.0
    assert u.max() < 1.0 and u.min() > 0.0
    assert np.isfinite(z).all()


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_normal_has_mean_zero_variance_one_and_gaussian_kurtosis(implementation):
    z = to_numpy(masks.normal((4 * N,), masks.make_seed(22), implementation=implementation))
    z = z.astype(np.float64)
    n = z.size
    assert np.isfinite(z).all()
    assert abs(z.mean()) < 4 / math.sqrt(n)
    assert abs(z.var() - 1) < 4 * math.sqrt(2 / n)
    # E z^4 = 3, Var z^4 = 105 - 9 = 96.
    assert abs(np.mean(z**4) - 3) < 4 * math.sqrt(96 / n)
    # One tail: P(z > 2) = 0.02275.
    tail = np.mean(z > 2)
    assert abs(tail - 0.0227501) < 4 * math.sqrt(0.0227501 * (1 - 0.0227501) / n)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("rate", [0.0, 1e-3, 0.25, 0.5, 0.9])
def test_keep_mask_keeps_one_minus_rate(rate, implementation):
    mask = to_numpy(masks.keep_mask((N,), rate, masks.make_seed(23), implementation=implementation))
    assert set(np.unique(mask).tolist()) <= {0.0, 1.0}
    p = 1 - rate
    if rate == 0:
        assert mask.all()
        return
    assert abs(mask.mean() - p) < 4 * math.sqrt(p * (1 - p) / N)


def test_keep_mask_takes_the_requested_dtype():
    mask = masks.keep_mask((8,), 0.5, masks.make_seed(24), dtype="float16")
    assert keras.backend.standardize_dtype(mask.dtype) == "float16"


@pytest.mark.parametrize("bits", ["top", "bottom"])
def test_random_bits_bytes_pass_a_chi_square_test_over_256_buckets(bits):
    values = to_numpy(masks.random_bits((N,), masks.make_seed(25))).astype(np.uint64)
    buckets = (values >> 24) if bits == "top" else (values & 0xFF)
    counts = np.bincount(buckets.astype(np.int64), minlength=256)
    expected = N / 256
    statistic = float(np.sum((counts - expected) ** 2 / expected))
    assert statistic < CHI2_CRITICAL_255, statistic


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("lag", [1, 2, 3, 64, 1024])
def test_uniform_autocorrelation_is_negligible(lag, implementation):
    u = to_numpy(masks.uniform((N,), masks.make_seed(26), implementation=implementation))
    u = u.astype(np.float64)
    r = np.corrcoef(u[:-lag], u[lag:])[0, 1]
    assert abs(r) < 5 / math.sqrt(N), r


# ---------------------------------------------------------------------------
# The 32-bit counter limit.

_TOO_LARGE = (2**16, 2**16 + 1)  # 2**32 + 2**16 elements


@pytest.mark.parametrize("function", ["random_bits", "uniform", "normal", "keep_mask"])
def test_more_than_2_to_the_32_elements_are_refused_naming_shape(function):
    seed = masks.make_seed(0)
    # The limit is the hash's 32-bit counter; Philox has none.
    draw = {
        "random_bits": lambda shape: masks.random_bits(shape, seed),
        "uniform": lambda shape: masks.uniform(shape, seed, implementation="hash"),
        "normal": lambda shape: masks.normal(shape, seed, implementation="hash"),
        "keep_mask": lambda shape: masks.keep_mask(shape, 0.5, seed, implementation="hash"),
    }[function]
    with pytest.raises(ValueError, match=r"`shape`.*Expected.*Received: shape="):
        draw(_TOO_LARGE)


def test_keras_tensor_shape_with_more_than_2_to_the_32_elements_is_refused():
    symbolic = keras.KerasTensor((2**17, 2**16), dtype="float32")
    with pytest.raises(ValueError, match=r"`shape`.*Received: shape=\(131072, 65536\)"):
        masks.random_bits(symbolic.shape, masks.make_seed(0))
