"""Stateless random masks: a seed goes in, a mask comes out.

Every random number keras-dropout draws comes from this module, from a
seed tensor and nothing else (no RNG state), by one of two paths:

- the hash path: a counter-based integer hash of `(seed, element index)`
  built from multiply / xor / shift ops. It runs eagerly, in graphs, under
  XLA and under JAX with the same bits on every backend, and XLA fuses it
  into the consuming elementwise op (backend RNG kernels under XLA on CPU
  run tens of times slower than a plain multiply). Used under XLA, on JAX,
  and whenever seeds come one per row (`predict_mc`).
- the TF graph path: TensorFlow's stateless Philox kernels, one
  multi-threaded op, which beat a dozen unfused integer ops on TF's non-XLA
  executor (eager, `tf.function`, SavedModel signatures).

Both use core ops only, so exported SavedModels run unchanged in TensorFlow
Serving. The two paths give different (equally valid) bits for the same seed.

A seed is a `uint32` tensor of shape `(2,)`, or `(N, 2)` for one seed per
row. `make_seed` builds one from integers; `fold_in` derives independent
child seeds (one per layer, per call, per row, per Monte Carlo sample).

Index space: the hash's element index is a 32-bit counter, so one draw (one
row, with per-row seeds) covers at most 2**32 numbers; larger static shapes
are refused with a `ValueError`.
"""

import math

import keras
import numpy as np
from keras import ops

_MAX_ELEMENTS = 2**32

# Constants of the "lowbias32" integer finaliser (Wellons, 2018): among the
# two-multiply xor-shift hashes it has the lowest measured avalanche bias.
_MUL_1 = 0x7FEB352D
_MUL_2 = 0x846CA68B
_GOLDEN = 0x9E3779B9


def _u32(value):
    return ops.convert_to_tensor(value, dtype="uint32")


def _mix(x):
    """One lowbias32 round on a uint32 tensor (a bijection of uint32)."""
    x = ops.bitwise_xor(x, ops.right_shift(x, _u32(16)))
    x = ops.multiply(x, _u32(_MUL_1))
    x = ops.bitwise_xor(x, ops.right_shift(x, _u32(15)))
    x = ops.multiply(x, _u32(_MUL_2))
    return ops.bitwise_xor(x, ops.right_shift(x, _u32(16)))


def _add(x, y):
    """`x + y` with NumPy broadcasting, wrapping around in uint32.

    Not `keras.ops.add`: on TensorFlow it turns a sum whose second operand
    squeezes to a vector matching `x`'s axis 1 or -1 into a `bias_add` along
    that axis, even when the vector broadcasts along another (Keras 3.15:
    `(12, 12, 32) + (12, 1, 1)` adds along axis 1). Per-row keys `(N, 1, 1)`
    hit that whenever N equals a static dimension, and rows then drew
    another row's bits.
    """
    return ops.convert_to_tensor(x) + ops.convert_to_tensor(y)


def _as_uint32(value):
    """Integer tensor or Python int -> uint32, keeping the low 32 bits."""
    if isinstance(value, (int, np.integer)):
        return _u32(int(value) & 0xFFFFFFFF)
    value = ops.convert_to_tensor(value)
    if value.dtype in ("int64", "uint64"):
        value = ops.bitwise_and(value, ops.convert_to_tensor(0xFFFFFFFF, value.dtype))
    return ops.cast(value, "uint32")


def make_seed(*values):
    """Builds a seed from integers (Python ints or integer tensors).

    Args:
        *values: one or more integers; each is reduced to its low 32 bits.

    Returns:
        A `uint32` tensor of shape `(2,)`.

    Example:

    >>> seed = make_seed(42)
    >>> child = fold_in(seed, 3)
    """
    if not values:
        raise ValueError("make_seed() needs at least one integer value.")
    seed = ops.stack([_u32(0x243F6A88), _u32(0x85A308D3)])
    for value in values:
        seed = fold_in(seed, value)
    return seed


def fold_in(seed, value):
    """Derives a new seed from `seed` and an integer `value`.

    Child seeds for different values are statistically independent, which is
    how layers, calls, rows and Monte Carlo samples get independent masks.
    Works elementwise on a batch of seeds `(N, 2)` with a value per seed.

    Args:
        seed: a `uint32` tensor of shape `(2,)` or `(N, 2)`.
        value: a Python int or an integer tensor broadcastable to `(N,)`.

    Returns:
        A `uint32` tensor of the seed's shape.
    """
    seed = ops.convert_to_tensor(seed)
    if seed.dtype != "uint32":
        seed = _as_uint32(seed)
    value = _as_uint32(value)
    k0, k1 = seed[..., 0], seed[..., 1]
    h0 = _mix(ops.bitwise_xor(k0, _mix(_add(value, _u32(_GOLDEN)))))
    h1 = _mix(_add(ops.bitwise_xor(k1, h0), value))
    return ops.stack([h0, h1], axis=-1)


def fold_in_replica(seed):
    """`seed`, made distinct per replica under a TensorFlow distribution strategy.

    Under `tf.distribute` (MirroredStrategy, TPUStrategy, ...) every replica
    runs the same step on a mirrored copy of a layer's state: without the
    replica id in the seed, all replicas would draw the same mask for their
    slices of the batch. Outside a multi-replica context (one replica,
    cross-replica code, JAX) `seed` is returned unchanged, so single-device
    mask sequences do not depend on this.

    Args:
        seed: a `uint32` seed tensor of shape `(2,)`.

    Returns:
        A `uint32` seed tensor of shape `(2,)`.
    """
    if keras.backend.backend() != "tensorflow":
        return seed
    import tensorflow as tf

    if not tf.distribute.has_strategy():
        return seed
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return seed
    return fold_in(seed, context.replica_id_in_sync_group)


def _static_size(shape):
    size = 1
    for dim in shape:
        if dim is None or not isinstance(dim, (int, np.integer)):
            return None
        size *= int(dim)
    return size


def random_bits(shape, seed):
    """Uniform random `uint32` values of the given shape: the hash path.

    With one seed `(2,)` the hash covers the flat element index. With one
    seed per row `(N, 2)` (N = `shape[0]`) it covers the index within the
    row, keyed by that row's seed: a row's values then do not depend on which
    other rows share the tensor, which is how `predict_mc` results stay the
    same whatever the batch size or chunking.

    Args:
        shape: a tuple of ints (dimensions may be symbolic tensors).
        seed: a `uint32` seed tensor of shape `(2,)` or `(shape[0], 2)`.

    Returns:
        A `uint32` tensor of `shape`.
    """
    seed = ops.convert_to_tensor(seed)
    per_row = len(seed.shape) == 2
    indexed_shape = tuple(shape[1:]) if per_row else tuple(shape)
    static_size = _static_size(indexed_shape)
    if static_size is not None and static_size > _MAX_ELEMENTS:
        raise ValueError(
            "Invalid value received for argument `shape`. Expected at most "
            f"2**32 elements per random draw{' per row' if per_row else ''}. "
            f"Received: shape={tuple(shape)} ({static_size} elements). Split "
            "the tensor or use a noise_shape."
        )
    size = static_size if static_size is not None else ops.prod(ops.stack(indexed_shape))
    index_dtype = "int64" if static_size and static_size >= 2**31 else "int32"
    index = ops.cast(ops.arange(size, dtype=index_dtype), "uint32")
    index = ops.reshape(index, indexed_shape)
    k0, k1 = seed[..., 0], seed[..., 1]
    if per_row:
        if isinstance(shape[0], int) and shape[0] == 1:
            # A mask shared across the batch (noise_shape[0] == 1).
            k0, k1 = k0[:1], k1[:1]
        key_shape = (-1,) + (1,) * len(indexed_shape)
        k0, k1 = ops.reshape(k0, key_shape), ops.reshape(k1, key_shape)
    bits = _mix(ops.bitwise_xor(ops.multiply(index, _u32(_GOLDEN)), k0))
    return _mix(_add(bits, k1))


_IMPLEMENTATIONS = ("auto", "hash", "philox")


def _philox_seed(seed, implementation="auto"):
    """A TF stateless-RNG seed, when the fast TF graph path applies; else None.

    TensorFlow's own stateless Philox kernel is one multi-threaded op, far
    faster than a dozen unfused integer ops on TF's non-XLA executor. Under
    XLA (and on JAX) the hash wins, because XLA fuses it into its consumer.
    Per-row seeds always take the hash path: only it gives rows independent
    of the batch they travel in.
    """
    if implementation not in _IMPLEMENTATIONS:
        raise ValueError(
            "Invalid value received for argument `implementation`. Expected one "
            f"of {_IMPLEMENTATIONS}. Received: implementation={implementation!r}"
        )
    if implementation == "hash":
        return None
    seed = ops.convert_to_tensor(seed)
    if keras.backend.backend() != "tensorflow" or len(seed.shape) != 1:
        if implementation == "philox":
            raise ValueError(
                "implementation='philox' needs the TensorFlow backend and one "
                f"seed of shape (2,). Received: seed.shape={tuple(seed.shape)} on "
                f"{keras.backend.backend()}"
            )
        return None
    import tensorflow as tf

    from keras_dropout import _keras_internals

    if implementation == "auto" and _keras_internals.in_xla_context():
        return None
    return tf.bitcast(seed, tf.int32)


def uniform(shape, seed, dtype="float32", implementation="auto"):
    """Uniform samples in the open interval (0, 1).

    Args:
        shape: output shape.
        seed: a `uint32` seed tensor of shape `(2,)` or `(shape[0], 2)`.
        dtype: float dtype of the result.
        implementation: "auto" (Philox on TensorFlow outside XLA with one
            seed, else the hash), "hash" or "philox" (TensorFlow only).

    Returns:
        A tensor of `shape` and `dtype`.
    """
    philox = _philox_seed(seed, implementation)
    if philox is not None:
        import tensorflow as tf

        # Philox's float path excludes 1 but not 0; the smallest float32
        # above 0 keeps log() finite.
        values = tf.random.stateless_uniform(shape, philox, minval=2**-24, maxval=1.0)
        return ops.cast(values, dtype)
    # 23 bits plus the half-step offset fit a float32 mantissa exactly, and
    # the offset keeps 0 and 1 out, so log() and erfinv() below stay finite.
    # (With 24 bits, 2**24 - 0.5 rounds to 2**24 in float32 and gives u = 1.)
    bits = ops.right_shift(random_bits(shape, seed), _u32(9))
    values = (ops.cast(bits, "float32") + 0.5) * (1.0 / 2**23)
    return ops.cast(values, dtype)


def normal(shape, seed, dtype="float32", implementation="auto"):
    """Standard normal samples.

    The hash path inverts the normal CDF (one hash per element, so Gaussian
    noise costs what a Bernoulli mask costs); TF's graph path uses its
    stateless normal kernel.

    Args:
        shape: output shape.
        seed: a `uint32` seed tensor of shape `(2,)` or `(shape[0], 2)`.
        dtype: float dtype of the result.
        implementation: "auto" (Philox on TensorFlow outside XLA with one
            seed, else the hash), "hash" or "philox" (TensorFlow only).

    Returns:
        A tensor of `shape` and `dtype`.
    """
    philox = _philox_seed(seed, implementation)
    if philox is not None:
        import tensorflow as tf

        return ops.cast(tf.random.stateless_normal(shape, philox), dtype)
    u = uniform(shape, seed, "float32", implementation="hash")
    values = math.sqrt(2.0) * ops.erfinv(2.0 * u - 1.0)
    return ops.cast(values, dtype)


def keep_mask(shape, rate, seed, dtype="float32", implementation="auto"):
    """A Bernoulli mask: 1 with probability `1 - rate`, else 0.

    Args:
        shape: output shape.
        rate: drop probability, a Python float in [0, 1).
        seed: a `uint32` seed tensor of shape `(2,)` or `(shape[0], 2)`.
        dtype: dtype of the mask.
        implementation: "auto" (Philox on TensorFlow outside XLA with one
            seed, else the hash), "hash" or "philox" (TensorFlow only).

    Returns:
        A tensor of `shape` and `dtype` holding zeros and ones.
    """
    philox = _philox_seed(seed, implementation)
    if philox is not None:
        return ops.cast(_philox_keep(shape, rate, philox), dtype)
    # Comparing raw bits against rate * 2**32 avoids the int->float
    # conversion entirely and is exact to 2**-32.
    threshold = min(int(round(float(rate) * 2**32)), 2**32 - 1)
    keep = ops.greater_equal(random_bits(shape, seed), _u32(threshold))
    return ops.cast(keep, dtype)


def _philox_keep(shape, rate, philox_seed):
    """Boolean keep mask from 16-bit Philox draws (rate resolution 2**-16).

    Two 16-bit draws per uint32 halve the RNG's cost, the dominant one; the
    rate is then exact to 1.5e-5, far below any test's or model's tolerance.
    """
    import tensorflow as tf

    static_size = _static_size(shape)
    size = static_size if static_size is not None else tf.reduce_prod(tf.stack(shape))
    words = tf.random.stateless_uniform(
        [(size + 1) // 2], philox_seed, minval=None, maxval=None, dtype=tf.uint32
    )
    halves = tf.reshape(tf.bitcast(words, tf.uint16), [-1])
    if static_size is None or static_size % 2:
        halves = halves[:size]
    threshold = min(int(round(float(rate) * 2**16)), 2**16 - 1)
    return tf.reshape(halves, shape) >= tf.constant(threshold, tf.uint16)
