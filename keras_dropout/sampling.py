"""The inference-time sampling switch.

`kd.sampling()` turns every keras-dropout layer in the process into sampling
mode at inference, without touching any other layer: BatchNormalization and
friends keep running in inference mode.

How it reaches code that was already traced or compiled: each keras-dropout
layer owns one small non-trainable `int32` variable, `sampling_state`
= `[enabled, seed, counter]`. Compiled functions (`tf.function`, XLA,
JAX's compiled `predict`) read that variable at run time, so flipping it from
Python takes effect on the next call without retracing. The counter advances
by one on every sampled call, so consecutive calls draw fresh masks, and
entering `sampling(seed=...)` resets every layer's seed and counter, so the
whole sequence of masks that follows is reproducible.

For code that must not write any variable (SavedModel signatures, the
vectorized core of `predict_mc`), `seed_scope(seed)` instead hands layers an
explicit seed tensor while a function is being traced.

The switch is process-wide: it is not thread-local, and two threads entering
`sampling()` with different seeds race. Use `predict_mc(..., seed=...)` or
serving signatures for concurrent, independent sampling.
"""

import contextlib
import numbers
import random
import threading
import weakref
import zlib

from keras_dropout import masks

_live_layers = weakref.WeakSet()
_lock = threading.Lock()
_switch = {"enabled": False, "seed": None}
# Called with no argument when a `sampling()` context is entered.
on_enable = []
_scopes = threading.local()


def register(layer):
    """Records a layer so that `sampling()` can reach it; returns its state."""
    with _lock:
        _live_layers.add(layer)
    return initial_state(layer)


def initial_state(layer):
    """`[enabled, seed, counter]` for a layer created or loaded right now."""
    enabled, seed = _switch["enabled"], _switch["seed"]
    return [int(enabled), layer_seed(layer, seed), 0]


def layer_seed(layer, base_seed=None):
    """The 31-bit seed a layer starts from, given the context's base seed.

    Layers are told apart by name (names survive `get_config` and `.keras`
    round trips, so a reloaded model replays the same masks) and by their
    own `seed` argument.
    """
    own_seed = getattr(layer, "seed", None)
    if base_seed is None:
        # A layer's own `seed` alone must make its masks reproducible, as
        # Keras' `Dropout(seed=...)` does; only unseeded layers draw one.
        base_seed = random.getrandbits(31) if own_seed is None else 0
    own_seed = own_seed or 0
    salt = zlib.crc32(f"{layer.name}/{own_seed}".encode())
    return zlib.crc32(f"{base_seed}/{salt}".encode()) & 0x7FFFFFFF


def is_enabled():
    """Whether a `sampling()` context is currently active."""
    return _switch["enabled"]


def is_enabled_in_this_thread():
    """Whether the innermost `sampling()` context of this thread samples.

    Keras' own layers (stock dropout, attention, RNN cells) follow the switch
    only in the thread that entered it; keras-dropout layers follow it
    everywhere (their state variable is process-wide).
    """
    stack = getattr(_scopes, "switch_stack", None)
    return bool(stack) and stack[-1] and _switch["enabled"]


def switch_seed():
    """The base seed of the active `sampling()` context."""
    return _switch["seed"] if _switch["seed"] is not None else 0


def _set_switch(enabled, seed):
    with _lock:
        _switch["enabled"], _switch["seed"] = enabled, seed
        layers = list(_live_layers)
    for layer in layers:
        layer.reset_sampling_state(enabled, layer_seed(layer, seed))


def _set_enabled(enabled):
    with _lock:
        _switch["enabled"] = enabled
        layers = list(_live_layers)
    for layer in layers:
        layer.set_sampling_enabled(enabled)


@contextlib.contextmanager
def sampling(enabled=True, seed=None):
    """Makes every keras-dropout layer sample at inference time.

    Inside the context, `model(x)`, `model.predict(x)`, `tf.function`s (with
    or without `jit_compile=True`) and JAX-compiled predict functions apply
    dropout noise, including functions traced before the context was entered.
    No other layer changes mode, and no weight or BatchNormalization
    statistic is written. The switch is process-wide (not per thread).

    Args:
        enabled: `True` to sample, `False` to force deterministic inference
            inside an outer `sampling()` context.
        seed: optional integer. With a seed, the whole sequence of masks drawn
            from the moment the context is entered is reproducible; without
            one, every context draws fresh masks (seeded by Python's `random`,
            so `keras.utils.set_random_seed` makes it reproducible too).

    Example:

    >>> import numpy as np, keras, keras_dropout as kd
    >>> model = keras.Sequential([keras.Input((4,)), kd.layers.MCDropout(0.5)])
    >>> x = np.ones((2, 4), "float32")
    >>> with kd.sampling(seed=0):
    ...     a = model.predict(x, verbose=0)
    ...     b = model.predict(x, verbose=0)   # a fresh mask
    >>> bool((a != b).any())
    True
    """
    # Keras' own dropout layers follow the switch through the call hooks `sites` installs on
    # import; `import keras_dropout` alone loads nothing.
    from keras_dropout import sites  # noqa: F401

    previous = (_switch["enabled"], _switch["seed"])
    if enabled:
        for callback in on_enable:
            callback()
        _set_switch(True, seed if seed is not None else random.getrandbits(31))
    else:
        _set_enabled(False)
    if not hasattr(_scopes, "switch_stack"):
        _scopes.switch_stack = []
    _scopes.switch_stack.append(bool(enabled))
    try:
        yield
    finally:
        _scopes.switch_stack.pop()
        _set_enabled(previous[0])
        _switch["seed"] = previous[1]


class _SeedScope:
    def __init__(self, seed, num_samples, row_ids=None, sample_ids=None):
        self.seed = seed
        self.num_samples = num_samples
        self.row_ids = row_ids
        self.sample_ids = sample_ids
        self.calls = 0

    def next_seed(self, layer):
        """The seed of this layer call: `(2,)`."""
        self.calls += 1
        salt = zlib.crc32(layer.name.encode())
        return masks.fold_in(masks.fold_in(self.seed, salt), self.calls)

    def row_seeds(self, seed):
        """One seed per tiled row, `(rows * S, 2)`, from (row id, sample id).

        Without ids (a plain `seed_scope`) the call seed itself.
        """
        self.last_call_seed = seed
        if self.row_ids is None:
            return seed
        from keras import ops

        # Row ids come as (low, high) uint32 words: 64-bit ids (example keys)
        # without int64 tensors, which JAX only has with x64 enabled.
        per_row = masks.fold_in(masks.fold_in(seed, self.row_ids[:, 0]), self.row_ids[:, 1])
        per_pair = masks.fold_in(ops.expand_dims(per_row, 1), ops.expand_dims(self.sample_ids, 0))
        return ops.reshape(per_pair, (-1, 2))  # row-major, as the batch is tiled

    def sample_seeds(self, seed):
        """One seed per Monte Carlo sample, `(S, 2)`, for noise shared by rows."""
        if self.sample_ids is None:
            return seed
        return masks.fold_in(seed, self.sample_ids)


def current_seed_scope():
    """The innermost active `seed_scope`, or None."""
    stack = getattr(_scopes, "stack", None)
    return stack[-1] if stack else None


@contextlib.contextmanager
def deterministic_scope():
    """Forces deterministic inference while a function is traced.

    Every keras-dropout layer called inside returns its noise-free output
    without reading or writing its state variable, whatever `kd.sampling()`,
    `always_on` or `training` say: what a `serving_default` signature needs.
    """
    with _pushed(_SeedScope(None, None)) as scope:
        yield scope


@contextlib.contextmanager
def _pushed(scope):
    if not hasattr(_scopes, "stack"):
        _scopes.stack = []
    _scopes.stack.append(scope)
    try:
        yield scope
    finally:
        _scopes.stack.pop()


@contextlib.contextmanager
def seed_scope(seed, num_samples=None, row_ids=None, sample_ids=None):
    """Forces sampling with an explicit seed while a function is traced.

    Every keras-dropout layer called inside draws its mask from
    `fold_in(seed, layer name, call index)` and writes no variable, which is
    what SavedModel signatures (no variable writes) and `predict_mc`'s
    vectorized core (reproducible from its own seed) need.

    Args:
        seed: a `uint32` seed tensor of shape `(2,)` (see `masks.make_seed`),
            or an integer.
        num_samples: when the batch holds S Monte Carlo samples of each row
            (row-major, as `predict_mc` tiles it), S; layers whose noise is
            shared across rows (DropConnect) then draw one mask per sample.
        row_ids, sample_ids: with `num_samples`, the ids of the batch's rows,
            `(rows, 2)` uint32 (low and high words of 64-bit ids), and the
            global indices `(S,)` of its samples. Masks are then
            keyed by (row, sample) instead of the position in the batch, so
            results do not depend on how rows and samples are chunked.
    """
    if isinstance(seed, numbers.Integral):  # NumPy integers too
        seed = masks.make_seed(int(seed))
    with _pushed(_SeedScope(seed, num_samples, row_ids, sample_ids)) as scope:
        yield scope
