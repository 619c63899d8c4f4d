"""Stochastic sites: every place a model applies dropout or noise, and how each samples.

A Keras model applies dropout in more places than its top-level layers: the
attention-probability dropout of `MultiHeadAttention`, the `Dropout` layers
inside keras_hub blocks, `TimeDistributed(Dropout)`, a custom layer's
`self.dropout = Dropout(...)`, the input and recurrent masks of LSTM / GRU /
SimpleRNN / ConvLSTM cells. `stochastic_sites(model)` lists them all, and the
call hooks installed here make each of them sample whenever keras-dropout
asks for it:

- inside `seed_scope` (`predict_mc`, the `mc` / `mc_sample` signatures):
  with keras-dropout's stateless masks, keyed by (seed, row, sample), written
  to no variable;
- inside `deterministic_scope` (`serving_default`): their inference output,
  without touching Keras' seed generators (an RNN otherwise advances its
  seed generator on every call, even at inference);
- inside `kd.sampling()`, in eager calls of the thread that entered it: the
  same masks, seeded by the context's seed (nothing else leaves inference
  mode); compiled code cannot read the switch for layers keras-dropout does
  not own, so there they stay deterministic, with a warning;
- otherwise: exactly Keras' own code path.

RNN dropout is variational (Gal & Ghahramani 2016b), as Keras applies it in
training: one input mask and one recurrent mask per sequence (and per Monte
Carlo sample), held over all time steps.

The hooks wrap Keras' classes, not the user's objects: a model is never
altered, its `.keras` file is unaffected, and weights are shared because
nothing is copied. The private methods wrapped are listed in
`keras_dropout._keras_internals`.
"""

import dataclasses
import importlib
import warnings
import weakref
import zlib

import keras
from keras import ops

from keras_dropout import _keras_internals as internals
from keras_dropout import masks
from keras_dropout.layers import alpha_dropout as alpha_module
from keras_dropout.layers import concrete_dropout as concrete_module
from keras_dropout.layers import dropconnect_dense as dropconnect_module
from keras_dropout.layers import dropout as dropout_module
from keras_dropout.layers import gaussian_dropout as gaussian_dropout_module
from keras_dropout.layers import gaussian_noise as gaussian_noise_module
from keras_dropout.layers import spatial_dropout as spatial_module
from keras_dropout.layers.sampling_layer import SamplingLayer

# The module: the package's attribute of this name is the `sampling()` function.
sampling = importlib.import_module("keras_dropout.sampling")


@dataclasses.dataclass(frozen=True)
class StochasticSite:
    """One place where a model applies dropout or noise.

    Attributes:
        path: the layer names from the model down to the site, joined by "/".
        kind: "dropout", "spatial_dropout", "gaussian_dropout",
            "alpha_dropout", "gaussian_noise", "dropconnect", "concrete",
            "rnn_input", "rnn_recurrent" or "attention".
        rate: the dropout rate (the `stddev` for "gaussian_noise"; the table
            heads it "rate/stddev").
        sampled: whether `predict_mc` and the MC signatures sample it.
        reason: why not, when `sampled` is False; else "".
        layer: the layer object (not shown when printed).
    """

    path: str
    kind: str
    rate: float
    sampled: bool
    reason: str = ""
    layer: object = dataclasses.field(default=None, repr=False, compare=False)


class StochasticSites(list):
    """A list of `StochasticSite`s that prints as a table."""

    def __str__(self):
        if not self:
            return "(no dropout or noise anywhere in the model)"
        rows = [("path", "kind", "rate/stddev", "sampled")] + [
            (
                site.path,
                site.kind,
                f"{site.rate:g}",
                "yes" if site.sampled else f"no: {site.reason}",
            )
            for site in self
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(3)]
        return "\n".join(
            "  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths)) + "  " + row[3]
            for row in rows
        )

    __repr__ = __str__

    @property
    def sampled(self):
        return [site for site in self if site.sampled]


def _spatial_sampler(layer, x, seed):
    # Keras' spatial layers know their own channel axis (`data_format`).
    return dropout_module.inverted_dropout(x, layer.rate, internals.spatial_noise_shape(layer, x), seed)


# Keras' dropout-family layers: (kind, rate attribute, sampler(layer, x, seed)).
_STOCK_LAYERS = {
    keras.layers.Dropout: (
        "dropout",
        "rate",
        lambda layer, x, seed: dropout_module.inverted_dropout(
            x, layer.rate, *dropout_module.batch_shared_noise(layer.noise_shape, ops.shape(x), seed)
        ),
    ),
    keras.layers.SpatialDropout1D: ("spatial_dropout", "rate", _spatial_sampler),
    keras.layers.SpatialDropout2D: ("spatial_dropout", "rate", _spatial_sampler),
    keras.layers.SpatialDropout3D: ("spatial_dropout", "rate", _spatial_sampler),
    keras.layers.GaussianDropout: (
        "gaussian_dropout",
        "rate",
        lambda layer, x, seed: gaussian_dropout_module.gaussian_dropout(x, layer.rate, seed),
    ),
    keras.layers.AlphaDropout: (
        "alpha_dropout",
        "rate",
        lambda layer, x, seed: alpha_module.alpha_dropout(
            x, layer.rate, *dropout_module.batch_shared_noise(layer.noise_shape, ops.shape(x), seed)
        ),
    ),
    keras.layers.GaussianNoise: (
        "gaussian_noise",
        "stddev",
        lambda layer, x, seed: gaussian_noise_module.gaussian_noise(x, layer.stddev, seed),
    ),
}

_OWN_LAYERS = (
    (dropout_module.MCDropout, "dropout", "rate"),
    (spatial_module.BaseMCSpatialDropout, "spatial_dropout", "rate"),
    (gaussian_dropout_module.MCGaussianDropout, "gaussian_dropout", "rate"),
    (alpha_module.MCAlphaDropout, "alpha_dropout", "rate"),
    (gaussian_noise_module.MCGaussianNoise, "gaussian_noise", "stddev"),
    (dropconnect_module.DropConnectDense, "dropconnect", "rate"),
    (concrete_module.ConcreteDropout, "concrete", "rate"),
)
_ELEMENTWISE_KINDS = ("dropout", "gaussian_dropout", "alpha_dropout", "gaussian_noise")

# Keras' own cells use `training` for dropout and nothing else, so forcing
# training=True in them samples their masks and changes nothing more.
_STOCK_CELLS = (
    keras.layers.LSTMCell,
    keras.layers.GRUCell,
    keras.layers.SimpleRNNCell,
    internals.ConvLSTMCell,
)
_ATTENTION_LAYERS = (keras.layers.MultiHeadAttention,) + (
    (keras.layers.GroupQueryAttention,) if hasattr(keras.layers, "GroupQueryAttention") else ()
)


def _stock_entry(layer):
    """`(class, kind, rate attribute, sampler)` for a Keras dropout-family layer."""
    for cls in type(layer).__mro__:
        if cls in _STOCK_LAYERS:
            kind, attribute, sampler = _STOCK_LAYERS[cls]
            return cls, kind, attribute, sampler
    return None


def _call_is_ours(layer, method="call"):
    """False for a subclass that overrides the hooked method: its own code runs."""
    return internals.is_hooked(getattr(type(layer), method))


# Stock sites compiled with sampling off, outside training: those compiled
# functions (an earlier model.predict, a tf.function) can never sample them.
_compiled_deterministic = weakref.WeakSet()
# Per-layer call counters of eager sampling under kd.sampling(); reset on entry.
_eager_counters = weakref.WeakKeyDictionary()


def _on_sampling_entered():
    _eager_counters.clear()
    names = sorted({layer.name for layer in list(_compiled_deterministic)})
    _compiled_deterministic.clear()
    if names:
        warnings.warn(
            "kd.sampling(): the dropout of these layers, which Keras applies itself, "
            "was compiled into inference functions while sampling was off (e.g. by an "
            "earlier model.predict or tf.function); those compiled functions keep it "
            f"deterministic: {', '.join(names[:10])}{'...' if len(names) > 10 else ''}. "
            "Use kd.predict_mc(model, x), or call the model eagerly (model(x)).",
            stacklevel=4,
        )


sampling.on_enable.append(_on_sampling_entered)


def _mode(layer=None, tensor=None, training=None):
    """"scoped", "deterministic", "switch" (kd.sampling()) or None (Keras' own).

    "switch" holds only in the thread that entered `kd.sampling()`: a stock
    model used by another thread meanwhile keeps Keras' own behaviour.
    """
    if internals.in_symbolic_scope():
        return None  # Keras inferring shapes
    scope = sampling.current_seed_scope()
    if scope is not None:
        return "deterministic" if scope.seed is None else "scoped"
    if sampling.is_enabled_in_this_thread() and not training:
        if not internals.is_traced(tensor):
            return "switch"
        _warn_compiled_switch(layer)
        return None
    if layer is not None and not training and internals.is_traced(tensor):
        _compiled_deterministic.add(layer)
    return None


def _warn_compiled_switch(layer):
    # Compiled code cannot read the switch for layers keras-dropout does not
    # own, and raising here would leave Keras' JAX predict with its variables
    # purged: the site stays deterministic in that function, and says so.
    if layer is None:
        return
    _compiled_deterministic.add(layer)
    warnings.warn(
        f"kd.sampling(): '{layer.name}' ({type(layer).__name__}) applies dropout itself "
        "and cannot sample inside a compiled function (model.predict, tf.function): it "
        "stays deterministic there, so those outputs leave its uncertainty out. Use "
        "kd.predict_mc(model, x) (every site samples, vectorized and seeded) or call "
        "the model eagerly inside kd.sampling() (model(x)).",
        stacklevel=3,
    )


def _site_seed(layer, mode):
    """The seed of this call: per tiled row under `seed_scope`; under an eager
    `kd.sampling(seed=...)`, the switch's seed, the layer and a call counter."""
    if mode == "scoped":
        scope = sampling.current_seed_scope()
        return scope.row_seeds(scope.next_seed(layer))
    count = _eager_counters.get(layer, 0)
    _eager_counters[layer] = count + 1
    return masks.make_seed(sampling.switch_seed(), zlib.crc32(layer.name.encode()), count)


def _dropout_call(original):
    def call(self, inputs, *args, **kwargs):
        attribute, sampler = _stock_entry(self)[2:]
        rate = getattr(self, attribute)
        mode = _mode(self if rate > 0 else None, inputs, kwargs.get("training"))
        if mode is None or not _call_is_ours(self):
            return original(self, inputs, *args, **kwargs)
        if not rate > 0 or mode == "deterministic":
            return inputs
        return sampler(self, inputs, _site_seed(self, mode))

    return call


def _cells(cell):
    nested = getattr(cell, "cells", None)
    if isinstance(cell, keras.layers.StackedRNNCells) and nested is not None:
        return [leaf for child in nested for leaf in _cells(child)]
    return [cell]


def _rnn_has_dropout(rnn):
    return any(
        getattr(cell, "dropout", 0) > 0 or getattr(cell, "recurrent_dropout", 0) > 0
        for cell in _cells(rnn.cell)
    )


def _rnn_obstacle(rnn):
    """Why the dropout of `rnn`'s cells cannot be sampled, or None."""
    if rnn.stateful:
        return f"RNN layer '{rnn.name}' is stateful (its state would be written)"
    custom = [type(cell).__name__ for cell in _cells(rnn.cell) if type(cell) not in _STOCK_CELLS]
    if custom:
        return (
            f"its RNN layer '{rnn.name}' runs custom cells ({', '.join(custom)}): "
            "training=True is only forced in Keras' own cells"
        )
    return None


def _rnn_call(original):
    def call(self, sequences, *args, **kwargs):
        has_dropout = _rnn_has_dropout(self)
        mode = _mode(self if has_dropout else None, sequences, kwargs.get("training"))
        if mode in ("scoped", "switch") and has_dropout and _rnn_obstacle(self) is None:
            kwargs["training"] = True
        return original(self, sequences, *args, **kwargs)

    return call


def _rnn_mask(original):
    def create_mask(self, step_input, dropout_rate):
        mode = _mode(None, step_input)
        if mode is None:
            return original(self, step_input, dropout_rate)
        count = getattr(self, "dropout_mask_count", None)
        if mode == "deterministic":
            # Never applied (training is False) but built by every RNN call:
            # ones instead of a draw that would advance the seed generator.
            ones = ops.ones_like(step_input)
            return ones if count is None else [ones] * count
        seed = _site_seed(self, mode)
        scale = 1.0 / (1.0 - dropout_rate)

        def one_mask(index):
            mask_seed = seed if count is None else masks.fold_in(seed, index)
            keep = masks.keep_mask(ops.shape(step_input), dropout_rate, mask_seed, step_input.dtype)
            return keep * scale

        return one_mask(0) if count is None else [one_mask(i) for i in range(count)]

    return create_mask


def _attention_scores(original):
    def apply_scores(self, scores, value, scores_mask=None, training=False):
        mode = _mode(self if self.dropout > 0 else None, scores, training)
        if mode is None or not self.dropout > 0 or not _call_is_ours(self, "_apply_scores"):
            return original(self, scores, value, scores_mask=scores_mask, training=training)
        # Keras' own masking and softmax; only the dropout is ours.
        _, weights = original(self, scores, value, scores_mask=scores_mask, training=False)
        if mode != "deterministic":
            weights = dropout_module.inverted_dropout(
                weights, self.dropout, ops.shape(weights), _site_seed(self, mode)
            )
        return ops.matmul(weights, value), weights

    return apply_scores


def _time_distributed_call(original):
    def call(self, inputs, *args, **kwargs):
        if _mode() != "scoped" or inputs.shape[1] is not None:
            return original(self, inputs, *args, **kwargs)
        inner = self.layer
        sites = stochastic_sites(inner)
        if not sites.sampled:
            return original(self, inputs, *args, **kwargs)
        # With an unknown number of steps Keras maps the layer over time with
        # vectorized_map, which would reuse one mask for every step.
        elementwise = (
            len(sites) == 1
            and sites[0].layer is inner
            and sites[0].kind in _ELEMENTWISE_KINDS
            and getattr(inner, "noise_shape", None) is None
        )
        if elementwise:
            # Elementwise noise on (batch, time, ...) at once: an independent
            # draw per step, as a step-by-step loop gives.
            return inner(inputs)
        raise ValueError(
            f"TimeDistributed '{self.name}' wraps '{inner.name}' ({type(inner).__name__}), "
            "which samples, over an unknown number of time steps: Keras then maps it "
            "with vectorized_map, which would draw one mask for all steps. Give the "
            "model's Input a fixed number of time steps."
        )

    return call


internals.install_call_hooks(
    time_distributed_call=_time_distributed_call,
    dropout_call=_dropout_call,
    rnn_call=_rnn_call,
    rnn_mask=_rnn_mask,
    attention_scores=_attention_scores,
    dropout_classes=list(_STOCK_LAYERS),
)


def _own_entry(layer):
    for cls, kind, attribute in _OWN_LAYERS:
        if isinstance(layer, cls):
            return kind, attribute
    return None


def _layer_sites(layer, path, parent, rnn):
    """The sites `layer` itself holds (its sublayers are visited separately)."""
    if isinstance(layer, SamplingLayer):
        kind, attribute = _own_entry(layer) or ("dropout", "rate")
        rate = float(ops.convert_to_numpy(getattr(layer, attribute, 0.0)))
        noisy = layer.is_noisy
        return [StochasticSite(path, kind, rate, noisy, "" if noisy else f"{attribute} is 0", layer)]
    entry = _stock_entry(layer)
    if entry is not None:
        cls, kind, attribute, _ = entry
        rate = float(getattr(layer, attribute))
        if isinstance(parent, _ATTENTION_LAYERS):
            kind = "attention"
        if not internals.is_hooked(type(layer).call):
            reason = f"{type(layer).__name__} overrides {cls.__name__}.call()"
            return [StochasticSite(path, kind, rate, False, reason, layer)]
        return [StochasticSite(path, kind, rate, rate > 0, "" if rate > 0 else f"{attribute} is 0", layer)]
    if isinstance(layer, keras.layers.Attention) and layer.dropout > 0:
        reason = "" if _call_is_ours(layer, "_apply_scores") else (
            f"{type(layer).__name__} overrides Attention._apply_scores()"
        )
        return [StochasticSite(path, "attention", float(layer.dropout), not reason, reason, layer)]
    if isinstance(layer, internals.DropoutRNNCell):
        sites = []
        for kind, attribute in (("rnn_input", "dropout"), ("rnn_recurrent", "recurrent_dropout")):
            rate = float(getattr(layer, attribute, 0.0))
            if rate > 0:
                reason = ""
                if type(layer) not in _STOCK_CELLS:
                    reason = (
                        f"custom cell class {type(layer).__name__}: training=True is "
                        "only forced in Keras' own cells"
                    )
                elif rnn is None:
                    reason = "the cell is not run by a keras RNN layer"
                else:
                    reason = _rnn_obstacle(rnn) or ""
                sites.append(StochasticSite(path, kind, rate, not reason, reason, layer))
        return sites
    return []


def _undetected_dropout(layer, path):
    """A site for a layer with a dropout rate but no dropout keras-dropout knows.

    Any attribute whose name contains "drop" (`dropout`, `drop_path_rate`,
    `drop_prob`, ...) holding a rate in (0, 1) counts: stochastic depth and
    custom dropout are named instead of skipped silently.
    """
    for attribute, value in sorted(vars(layer).items()):
        if "drop" not in attribute.lower():
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1:
            name = attribute.lstrip("_")
            reason = (
                f"{type(layer).__name__} applies its {name}={value:g} itself, "
                "not through a keras.layers.Dropout, so it cannot be sampled"
            )
            return StochasticSite(path, "dropout", float(value), False, reason, layer)
    return None


def stochastic_sites(model):
    """Lists every place `model` applies dropout or noise, and whether it samples.

    Walks the model's layers and the layers they hold (nested models,
    wrappers, attention blocks, RNN cells, custom layers' attributes) and
    returns one `StochasticSite` per site: the keras-dropout layers, Keras'
    dropout-family layers wherever they sit (`kind="attention"` for the
    attention-probability dropout of `MultiHeadAttention`), `Attention(
    dropout=)`, and the input (`"rnn_input"`) and recurrent
    (`"rnn_recurrent"`) dropout of RNN cells. A layer with a dropout rate
    that applies it some other way is listed with `sampled=False` and the
    reason.

    Args:
        model: a Keras model or layer (built, so that its sublayers exist).

    Returns:
        A `StochasticSites` list (it prints as a table).

    Example:

    >>> import keras, keras_dropout as kd
    >>> model = keras.Sequential([keras.Input((4, 8)), keras.layers.LSTM(
    ...     8, dropout=0.1, recurrent_dropout=0.2), keras.layers.Dropout(0.5)])
    >>> [(s.kind, s.rate) for s in kd.stochastic_sites(model)]
    [('rnn_input', 0.1), ('rnn_recurrent', 0.2), ('dropout', 0.5)]
    """
    sites = StochasticSites()
    seen = set()

    def visit(layer, path, parent, rnn):
        if id(layer) in seen:
            return
        seen.add(id(layer))
        if isinstance(layer, internals.RNN):
            rnn = layer
        own = _layer_sites(layer, path, parent, rnn)
        sites.extend(own)
        before = len(sites)
        for child in internals.sublayers(layer):
            visit(child, f"{path}/{child.name}" if path else child.name, layer, rnn)
        if not own and len(sites) == before and layer is not model:
            undetected = _undetected_dropout(layer, path)
            if undetected is not None:
                sites.append(undetected)

    visit(model, "" if isinstance(model, keras.Model) else model.name, None, None)
    return sites


def has_sampled_site(layer):
    """Whether `layer` (or anything inside it) samples under `seed_scope`."""
    return any(site.sampled for site in stochastic_sites(layer))
