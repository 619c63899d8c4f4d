"""`convert`: swap stock Keras dropout-family layers for their MC counterparts."""

import warnings

import keras

from keras_dropout import _keras_internals
from keras_dropout import layers as mc_layers

_COUNTERPARTS = {
    keras.layers.Dropout: mc_layers.MCDropout,
    keras.layers.SpatialDropout1D: mc_layers.MCSpatialDropout1D,
    keras.layers.SpatialDropout2D: mc_layers.MCSpatialDropout2D,
    keras.layers.SpatialDropout3D: mc_layers.MCSpatialDropout3D,
    keras.layers.GaussianDropout: mc_layers.MCGaussianDropout,
    keras.layers.AlphaDropout: mc_layers.MCAlphaDropout,
    keras.layers.GaussianNoise: mc_layers.MCGaussianNoise,
}

# Attributes through which other layers apply dropout internally
# (LSTM/GRU/SimpleRNN, MultiHeadAttention, Attention, ...).
_INTERNAL_DROPOUT_ATTRIBUTES = ("dropout", "recurrent_dropout")


def _counterpart(layer):
    # Exact type: a user's subclass of Dropout may change call(); leave it.
    return _COUNTERPARTS.get(type(layer))


def _is_container(layer):
    return _keras_internals.is_functional(layer)


def _all_layers(model):
    return _keras_internals.flatten_layers(model)


def _swap(layer):
    counterpart = _counterpart(layer)
    if counterpart is None:
        if isinstance(layer, keras.Model) and not _is_container(layer):
            _refuse_subclassed(layer)
        return layer
    # The constructor, not from_config: from_config turns our ValueError
    # into a TypeError that hides the message.
    config = {**layer.get_config(), "dtype": layer.dtype_policy}
    try:
        return counterpart(**config)
    except ValueError as error:
        raise ValueError(
            f"Cannot convert layer '{layer.name}' "
            f"({type(layer).__name__}) to {counterpart.__name__}: {error}"
        ) from None


def _refuse_subclassed(model):
    stock = [
        layer.name for layer in _all_layers(model) if _counterpart(layer) is not None
    ]
    if stock:
        raise ValueError(
            f"Cannot convert the subclassed model '{model.name}' "
            f"({type(model).__name__}): only Sequential and functional models "
            "can be rebuilt, and it holds stock dropout layers "
            f"{stock} that would stay deterministic. Build it with "
            "keras_dropout.layers (e.g. MCDropout) instead."
        )


def _warn_about_internal_dropout(model):
    names = []
    for layer in _all_layers(model):
        if _counterpart(layer) is not None:
            continue
        rates = {
            attribute: getattr(layer, attribute)
            for attribute in _INTERNAL_DROPOUT_ATTRIBUTES
            if isinstance(getattr(layer, attribute, None), (int, float))
            and getattr(layer, attribute) > 0
        }
        if rates:
            described = ", ".join(f"{k}={v}" for k, v in rates.items())
            names.append(f"'{layer.name}' ({type(layer).__name__}: {described})")
    if names:
        warnings.warn(
            "keras_dropout.convert cannot swap the dropout these layers apply "
            "internally: it samples under kd.predict_mc, the MC serving signatures "
            "and in eager calls inside kd.sampling(), but not in functions "
            "compiled under kd.sampling() (model.predict): " + "; ".join(names),
            stacklevel=3,
        )


def convert(model):
    """Returns a model in which stock dropout-family layers sample on request.

    Every `keras.layers.Dropout`, `SpatialDropout1D/2D/3D`, `GaussianDropout`,
    `AlphaDropout` and `GaussianNoise` (exact classes, in nested Sequential
    and functional models too) is replaced by its keras-dropout counterpart
    with the same configuration. Every other layer is *shared* with the
    original, not copied: the two models have the same weights, and training
    either trains both. The original model, its layers and its config are
    left untouched.

    Layers whose dropout lives inside them (LSTM/GRU `dropout` and
    `recurrent_dropout`, `MultiHeadAttention(dropout=...)`) cannot be swapped
    and are named in a warning. `kd.predict_mc` and the MC signatures need no
    conversion: they sample every site of the original model in place.

    Args:
        model: a Sequential or functional `keras.Model`.

    Returns:
        A new `keras.Model` of the same kind.

    Raises:
        ValueError: for a subclassed model holding stock dropout layers (it
            cannot be rebuilt), or a stock layer whose configuration our layer
            refuses (e.g. `rate=1.0`); the message names the layer.

    Example:

    >>> import numpy as np, keras, keras_dropout as kd
    >>> stock = keras.Sequential([keras.Input((3,)), keras.layers.Dense(8),
    ...                           keras.layers.Dropout(0.5), keras.layers.Dense(1)])
    >>> mc = kd.convert(stock)
    >>> type(mc.layers[1]).__name__, mc.layers[0] is stock.layers[0]
    ('MCDropout', True)
    """
    if not isinstance(model, keras.Model):
        raise ValueError(
            "Invalid value received for argument `model`. Expected a "
            f"keras.Model. Received: model={model!r}"
        )
    if not _is_container(model):
        _refuse_subclassed(model)
        raise ValueError(
            f"Cannot convert the subclassed model '{model.name}' "
            f"({type(model).__name__}): only Sequential and functional models "
            "can be rebuilt. Use keras_dropout.layers inside it instead."
        )
    _warn_about_internal_dropout(model)
    converted = keras.models.clone_model(model, clone_function=_swap, recursive=True)
    return converted
