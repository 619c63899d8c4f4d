"""The base class of every keras-dropout layer: when to add noise, and with which seed."""

import math
import numbers

import keras
from keras import ops

from keras_dropout import _keras_internals as internals
from keras_dropout import masks
from keras_dropout.sampling import current_seed_scope
from keras_dropout.sampling import initial_state
from keras_dropout.sampling import register


class SamplingLayer(keras.layers.Layer):
    """A layer that is noisy in training and, on request, at inference.

    Noise is applied when the layer is called with `training=True`, when it
    was built with `always_on=True`, or while sampling is switched on by
    `kd.sampling()`, `kd.predict_mc` or an MC serving signature; in no other
    case. Subclasses whose noise multiplies the input implement
    `sampled_multiplier(input_shape, dtype, seed)`; others implement
    `sampled_call(inputs, seed)`; and, when inference is not the identity,
    `deterministic_call(inputs)`.

    The layer owns one non-trainable `int32` variable, `sampling_state`
    (`[enabled, seed, counter]`), read at run time so that the switch reaches
    already-compiled functions; see `keras_dropout.sampling`.

    Args:
        seed: optional integer; makes training-time masks reproducible.
        always_on: if `True`, the layer samples at inference too, whatever
            the switch says.
        **kwargs: base `keras.layers.Layer` arguments (`name`, `dtype`, ...).
    """

    def __init__(self, seed=None, always_on=False, **kwargs):
        super().__init__(**kwargs)
        if seed is not None and (
            isinstance(seed, bool) or not isinstance(seed, numbers.Integral)
        ):
            raise ValueError(
                "Invalid value received for argument `seed`. Expected an "
                f"integer or None. Received: seed={seed!r}"
            )
        if not isinstance(always_on, bool):
            raise ValueError(
                "Invalid value received for argument `always_on`. Expected a "
                f"bool. Received: always_on={always_on!r}"
            )
        self.seed = seed
        self.always_on = always_on
        self.supports_masking = True
        self.sampling_state = self.add_weight(
            name="sampling_state",
            shape=(3,),
            dtype="int32",
            initializer=keras.initializers.Constant(register(self)),
            trainable=False,
            autocast=False,
            # Under tf.distribute each replica advances its own copy, in step
            # with the others (the replica id, folded into the seed, tells
            # their masks apart). Any other aggregation makes the write a
            # merge_call, which fails inside tf.cond / tf.while_loop.
            aggregation="none",
        )

    @property
    def is_noisy(self):
        """False when the configuration adds no noise at all (rate 0)."""
        return True

    def sampled_multiplier(self, input_shape, dtype, seed):
        """The noise of one sampled call, for layers whose noise multiplies the
        input: drawn from the input's shape (`ops.shape`) and dtype alone,
        broadcastable against the input. Layers whose noise is not a
        multiplier override `sampled_call` instead.
        """
        raise NotImplementedError

    def sampled_call(self, inputs, seed):
        return inputs * self.sampled_multiplier(ops.shape(inputs), inputs.dtype, seed)

    def scoped_seed(self, scope):
        """The seed(s) of a call under `seed_scope`: one per tiled row.

        Layers whose noise is shared by the rows of a call override this.
        """
        return scope.row_seeds(scope.next_seed(self))

    def deterministic_call(self, inputs):
        return inputs

    def call(self, inputs, training=None):
        if not self.is_noisy:
            return self.deterministic_call(inputs)
        scope = current_seed_scope()
        if scope is not None and scope.seed is None:
            return self.deterministic_call(inputs)
        if scope is not None:
            return self.sampled_call(inputs, self.scoped_seed(scope))
        if training or self.always_on:
            return self.sampled_call(inputs, self._advance_seed(1))
        enabled = ops.greater(self.sampling_state[0], 0)
        # The counter update stays outside the cond: JAX cannot carry a
        # variable write out of a branch.
        seed = self._advance_seed(ops.cast(enabled, "int32"))
        concrete = _concrete_bool(enabled)
        if concrete is not None:
            # Eager: branch in Python. An eager JAX cond would recompile on
            # every call, since its branches close over the inputs.
            return self.sampled_call(inputs, seed) if concrete else self.deterministic_call(inputs)
        if self._multiplies_outside_cond():
            # TF's graph executor: a cond whose branch reads the input costs
            # about one more pass over it (bench_dropout.py: 3.4x `x * 2`
            # against 2.5x without), so the cond yields only the multiplier
            # (a broadcast 1 when off) and the product is taken outside.
            shape = ops.shape(inputs)
            multiplier = ops.cond(
                enabled,
                lambda: self.sampled_multiplier(shape, inputs.dtype, seed),
                lambda: ops.ones((1,) * len(shape), inputs.dtype),
            )
            return inputs * multiplier
        return ops.cond(
            enabled,
            lambda: self.sampled_call(inputs, seed),
            lambda: self.deterministic_call(inputs),
        )

    def _multiplies_outside_cond(self):
        # Under XLA (and on JAX) the cond over the input is free, and a
        # multiplier out of a cond would be materialised: 2x slower there.
        return (
            type(self).sampled_call is SamplingLayer.sampled_call
            and type(self).deterministic_call is SamplingLayer.deterministic_call
            and keras.backend.backend() == "tensorflow"
            and not internals.in_xla_context()
        )

    def _advance_seed(self, increment):
        state = ops.convert_to_tensor(self.sampling_state)
        seed = masks.fold_in_replica(masks.make_seed(state[1], state[2]))
        self.sampling_state.assign(
            state + ops.stack([0, 0, ops.cast(increment, "int32")])
        )
        return seed

    def reset_sampling_state(self, enabled, seed):
        """Sets the switch and restarts the mask sequence from `seed`."""
        self.sampling_state.assign([int(enabled), int(seed), 0])

    def set_sampling_enabled(self, enabled):
        state = ops.convert_to_numpy(self.sampling_state).copy()
        state[0] = int(enabled)
        self.sampling_state.assign(state)

    def load_own_variables(self, store):
        super().load_own_variables(store)
        # A model saved inside `kd.sampling()` must not come back sampling.
        self.sampling_state.assign(initial_state(self))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        base_config = super().get_config()
        config = {"seed": self.seed, "always_on": self.always_on}
        return {**base_config, **config}


def _concrete_bool(tensor):
    """The value of a boolean scalar when it is known now (eager), else None."""
    try:
        return bool(tensor)
    except TypeError:  # a graph tensor or a JAX tracer
        return None


def validate_rate(rate, name="rate"):
    """Returns `rate` as a float in [0, 1), or raises a ValueError naming it.

    1.0 is refused on purpose (Keras accepts it): it drops everything and
    makes the 1 / (1 - rate) scale infinite.
    """
    if (
        isinstance(rate, bool)
        or not isinstance(rate, numbers.Real)
        or not math.isfinite(rate)
        or not 0 <= rate < 1
    ):
        raise ValueError(
            f"Invalid value received for argument `{name}`. Expected a float "
            f"value in [0, 1) (0 inclusive, 1 exclusive). Received: {name}={rate!r}"
        )
    return float(rate)


def validate_stddev(stddev):
    """Returns `stddev` as a finite float >= 0, or raises a ValueError."""
    if (
        isinstance(stddev, bool)
        or not isinstance(stddev, numbers.Real)
        or not math.isfinite(stddev)
        or stddev < 0
    ):
        raise ValueError(
            "Invalid value received for argument `stddev`. Expected a finite "
            f"float >= 0. Received: stddev={stddev!r}"
        )
    return float(stddev)
