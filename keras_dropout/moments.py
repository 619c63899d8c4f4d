"""Moment propagation: MC dropout's predictive mean and variance in one forward pass.

Instead of S sampled passes, every tensor downstream of the first stochastic layer carries a
mean and a variance (and, across the units of small dense layers, a covariance), and each layer
maps input moments to output moments with a small rule (Brach, Sick & Duerr 2020, "Single Shot
MC Dropout Approximation"; Postels et al. 2019, "Sampling-free epistemic uncertainty estimation
using approximated variance propagation"; Wu et al. 2019, "Deterministic variational
inference"). Layers no noise reaches run as they are.

The approximations, stated once:
- Covariance: across the last axis of dense (`Dense`, `EinsumDense`) outputs of at most 128
  units, the covariance is tracked: exact through linear maps and noise layers, first order
  through activations (Cov(f(x_i), f(x_j)) ~ E[f'(x_i)] E[f'(x_j)] Cov(x_i, x_j), the gains by
  Stein's lemma), with the exact variances on its diagonal. Elsewhere (wider layers,
  convolutions, merges, pooling, normalisation) entries are treated as independent: the
  variance of a sum of correlated terms is then biased (units sharing a dropout mask are
  correlated). Spatial dropout's per-entry moments are exact; the correlation of a channel's
  positions, which share its mask, is not tracked.
- Gaussian entries before nonlinearities: ReLU uses the exact moments of a rectified Gaussian;
  other elementwise activations use 32-point Gauss-Hermite quadrature of the Gaussian. A
  pre-activation made of a few dropped inputs is a mixture, not a Gaussian: where Bernoulli
  dropout meets deterministic inputs right before a dense layer, its drop patterns are
  enumerated instead (exact; up to 4 dropped inputs, when the rest are negligible and the
  tensors small), else the Gaussian is biased there.
- LayerNormalization normalises by the statistics of the mean (plus the average variance),
  treated as constants.
- Classification: the logits' Gaussian (mean, diagonal variance) is sampled (256 common random
  draws, a fixed seed) and pushed through the softmax or sigmoid, so the probabilities, entropies
  and mutual information are computed by the same code as `predict_mc`'s, at the cost of the
  output layer only. A closed form (probit / Laplace bridge) gives the mean but not the
  entropies; sampling the logits alone gives all of them consistently.
- Half-precision models propagate in float32.

- MaxPooling: Clark's moments of the max of two Gaussians, folded over the window (partial
  maxima taken as Gaussian, entries independent).

What has no rule (RNNs, attention, transposed convolutions, masks, quantized layers, layers that
subclass a known one and compute otherwise) is a `ValueError` naming the layer.
"""

import contextvars
import itertools
import math
import statistics
import weakref

import keras
import numpy as np
from keras import ops
from keras import tree

from keras_dropout import _keras_internals as internals
from keras_dropout import layers as kd_layers
from keras_dropout.heads import prediction_heads
from keras_dropout.mc import MCPrediction
from keras_dropout.sites import has_sampled_site

LOGIT_SAMPLES = 256
# Full covariance across the last axis is tracked through dense layers of at most this many
# units (cost: units^3 per row); predict_moments(covariance=...) sets it while tracing.
FULL_COVARIANCE_UNITS = 128
# Covariance is tracked only while rows hold at most this many covariance entries (a
# (rows, T, units) sequence would need T x units^2 of them).
COVARIANCE_ENTRIES_PER_ROW = 2**16
_covariance_units = contextvars.ContextVar("covariance_units", default=FULL_COVARIANCE_UNITS)
_HERMITE_NODES, _HERMITE_WEIGHTS = np.polynomial.hermite.hermgauss(32)
_RULES = {}


class Moments:
    """The mean and variance of a tensor (`variance` None: deterministic).

    `covariance`: optionally, the covariance across the last axis,
    `shape + (units,)` (its diagonal is `variance`); None: entries independent.
    `logits`: for the output of a softmax or sigmoid, the moments of its input.
    """

    def __init__(self, mean, variance=None, covariance=None, logits=None):
        self.mean = mean
        self.variance = variance
        self.covariance = covariance
        self.logits = logits
        # For deterministic x under independent Bernoulli dropout: (x, rate), which lets the
        # next linear layer enumerate drop patterns instead of assuming a Gaussian.
        self.bernoulli = None

    def variance_or_zeros(self):
        return ops.zeros_like(self.mean) if self.variance is None else self.variance


def rule(*classes):
    """Registers a propagation rule `fn(layer, moments) -> Moments` for layer classes."""

    def register(fn):
        for cls in classes:
            _RULES[cls] = fn
        return fn

    return register


def propagate(model, inputs, covariance_units=FULL_COVARIANCE_UNITS):
    """The moments of `model`'s outputs for `inputs` (deterministic inputs).

    Args:
        model: a Sequential or functional Keras model.
        inputs: its inputs (tensor, list or dict).
        covariance_units: track the covariance across dense layers of at most
            this many units (0: diagonal only).

    Returns:
        The model's output structure with a `Moments` for each output, plus a
        dict `{id(output mean): logit Moments}` for outputs produced by a
        softmax or sigmoid (the moments of its input).
    """
    graph = internals.functional_graph(model)
    if graph is None:
        raise ValueError(
            f"predict_moments propagates through Sequential and functional models; '{model.name}' is "
            f"subclassed ({type(model).__name__}), so it has no graph to walk. Use kd.predict_mc."
        )
    token = _covariance_units.set(covariance_units)
    try:
        walk = _Walk()
        outputs = walk.run_graph(graph, inputs)
    finally:
        _covariance_units.reset(token)
    moments = tree.map_structure(walk.moments_of, outputs)
    return moments, walk.logits


class _Walk:
    """Runs a graph on means, keeping each random tensor's variance beside it."""

    def __init__(self):
        self.random = {}  # id(mean) -> Moments (holding the mean keeps its id unique)
        self.logits = {}  # id(probabilities mean) -> Moments of the logits
        self.stochastic = {}

    def moments_of(self, tensor):
        return self.random.get(id(tensor)) or Moments(tensor)

    def is_random(self, tensor):
        return id(tensor) in self.random

    def run_graph(self, graph, inputs):
        return internals.run_graph(graph, inputs, self.wrap)

    def wrap(self, layer):
        def run(*args, **kwargs):
            tensors = [t for t in tree.flatten((args, kwargs)) if _is_tensor(t)]
            random = any(self.is_random(t) for t in tensors)
            if not random and not self._is_stochastic(layer):
                return layer(*args, **kwargs)  # deterministic: exactly as the model computes it
            nested = internals.functional_graph(layer)
            if nested is not None:
                return self.run_graph(nested, args[0] if len(args) == 1 else args)
            propagate_layer = _rule_for(layer) if isinstance(layer, keras.layers.Layer) else None
            if propagate_layer is None:
                what = "layer" if isinstance(layer, keras.layers.Layer) else "keras.ops operation"
                raise ValueError(
                    f"predict_moments has no propagation rule for {what} '{layer.name}' "
                    f"({type(layer).__name__}), which noise reaches. Use kd.predict_mc for this model "
                    "(Monte Carlo sampling runs every layer)."
                )
            if kwargs.get("mask") is not None or any(internals.keras_mask(t) is not None for t in tensors):
                raise ValueError(
                    f"predict_moments does not propagate Keras masks (mask_zero, Masking), which reach "
                    f"layer '{layer.name}' with the noise. Use kd.predict_mc for this model."
                )
            inputs = args[0] if len(args) == 1 else list(args)
            result = propagate_layer(
                layer, tree.map_structure(lambda t: _at_least_float32(self.moments_of(t)) if _is_tensor(t) else t, inputs)
            )
            if any(result.mean is t for t in tensors):
                # A rule that passes the mean through (dropout): a new tensor, so the input
                # keeps its own (deterministic or random) moments for its other consumers.
                result.mean = ops.copy(result.mean)
            if result.variance is not None:
                self.random[id(result.mean)] = result
            if result.logits is not None:
                self.logits[id(result.mean)] = result.logits
            return result.mean

        return run

    def _is_stochastic(self, layer):
        if id(layer) not in self.stochastic:
            self.stochastic[id(layer)] = hasattr(layer, "_layers") and has_sampled_site(layer)
        return self.stochastic[id(layer)]


def _at_least_float32(moments):
    """Moments in float32 at least: half precision would lose variances (a 1e-12 floor is 0)."""
    dtype = keras.backend.standardize_dtype(moments.mean.dtype)
    if dtype not in ("float16", "bfloat16"):
        return moments
    cast = (lambda t: None if t is None else ops.cast(t, "float32"))
    return Moments(cast(moments.mean), cast(moments.variance), cast(moments.covariance), moments.logits)


def _rule_for(layer):
    """The rule of the layer's class, or of a base class it inherits its computation from.

    A subclass that overrides its computation (`call`, `sampled_call`, ...) computes something else: no rule,
    so an error rather than a silent wrong answer.
    """
    for cls in type(layer).__mro__:
        if cls in _RULES:
            inherited = all(
                getattr(type(layer), name, None) is getattr(cls, name, None)
                for name in ("call", "sampled_call", "sampled_multiplier", "deterministic_call")
            )
            return _RULES[cls] if inherited else None
    return None


def _is_tensor(value):
    return hasattr(value, "shape") and hasattr(value, "dtype")


# --- Noise layers -------------------------------------------------------------


def scaled_bernoulli(moments, rate):
    """`x * z / (1 - rate)`, `z ~ Bernoulli(1 - rate)` independent of `x`."""
    keep = 1.0 - rate
    m, v = moments.mean, moments.variance_or_zeros()
    variance = v / keep + ops.square(m) * (rate / keep)
    # Off the diagonal, independent masks of mean 1 leave the covariance as it is.
    return Moments(m, variance, _with_diagonal(moments.covariance, variance))


def multiplicative(moments, scale_mean, scale_second_moment):
    """`x * s` for noise `s` independent of `x` with E[s] and E[s^2] given."""
    m, v = moments.mean, moments.variance_or_zeros()
    mean = m * scale_mean
    variance = (v + ops.square(m)) * scale_second_moment - ops.square(mean)
    covariance = None if moments.covariance is None else moments.covariance * scale_mean**2
    return Moments(mean, variance, _with_diagonal(covariance, variance))


def _with_diagonal(covariance, variance):
    """`covariance` with its diagonal replaced by `variance` (None stays None)."""
    if covariance is None:
        return None
    diagonal = ops.diagonal(covariance, axis1=-2, axis2=-1)
    return covariance + ops.expand_dims(variance - diagonal, -1) * ops.eye(ops.shape(variance)[-1], dtype=variance.dtype)


@rule(
    keras.layers.Dropout,
    keras.layers.SpatialDropout1D,
    keras.layers.SpatialDropout2D,
    keras.layers.SpatialDropout3D,
    kd_layers.MCDropout,
    kd_layers.MCSpatialDropout1D,
    kd_layers.MCSpatialDropout2D,
    kd_layers.MCSpatialDropout3D,
)
def _dropout(layer, moments):
    result = scaled_bernoulli(moments, float(layer.rate))
    noise_shape = getattr(layer, "noise_shape", None)
    independent = noise_shape is None and not isinstance(layer, _SPATIAL_DROPOUT)
    if independent and moments.variance is None:
        result.bernoulli = (moments.mean, float(layer.rate))
    shared_last = (noise_shape is not None and noise_shape[-1] == 1) or getattr(layer, "data_format", None) == "channels_first"
    if shared_last:
        # A mask shared along the last axis correlates its entries: the tracked
        # covariance would miss that, so fall back to the (exact) diagonal.
        result.covariance = None
    return result


_SPATIAL_DROPOUT = (
    keras.layers.SpatialDropout1D,
    keras.layers.SpatialDropout2D,
    keras.layers.SpatialDropout3D,
    kd_layers.MCSpatialDropout1D,
    kd_layers.MCSpatialDropout2D,
    kd_layers.MCSpatialDropout3D,
)


@rule(keras.layers.GaussianDropout, kd_layers.MCGaussianDropout)
def _gaussian_dropout(layer, moments):
    noise_variance = float(layer.rate) / (1.0 - float(layer.rate))
    return multiplicative(moments, 1.0, 1.0 + noise_variance)


@rule(keras.layers.GaussianNoise, kd_layers.MCGaussianNoise)
def _gaussian_noise(layer, moments):
    variance = moments.variance_or_zeros() + float(layer.stddev) ** 2
    return Moments(moments.mean, variance, _with_diagonal(moments.covariance, variance))


@rule(keras.layers.AlphaDropout, kd_layers.MCAlphaDropout)
def _alpha_dropout(layer, moments):
    # a * (x * z + alpha' * (1 - z)) + b with z ~ Bernoulli(1 - rate), as Keras computes it.
    rate = float(layer.rate)
    keep = 1.0 - rate
    alpha_p = -1.6732632423543772 * 1.0507009873554805
    a = (keep * (1 + rate * alpha_p**2)) ** -0.5
    b = -a * alpha_p * rate
    m, v = moments.mean, moments.variance_or_zeros()
    mixed_mean = keep * m + rate * alpha_p
    mixed_second = keep * (v + ops.square(m)) + rate * alpha_p**2
    variance = a**2 * (mixed_second - ops.square(mixed_mean))
    covariance = None if moments.covariance is None else moments.covariance * (a * keep) ** 2
    return Moments(a * mixed_mean + b, variance, _with_diagonal(covariance, variance))


@rule(kd_layers.DropConnectDense)
def _dropconnect_dense(layer, moments):
    # Each kernel entry kept with probability 1 - rate (scaled): the terms of a unit's sum are
    # independent, so its variance is the sum of their variances.
    keep = 1.0 - float(layer.rate)
    kernel = ops.cast(layer.kernel, moments.mean.dtype)
    m, v = moments.mean, moments.variance_or_zeros()
    mean = ops.matmul(m, kernel)
    second = ops.matmul(v + ops.square(m), ops.square(kernel)) / keep
    variance = second - ops.matmul(ops.square(m), ops.square(kernel))
    if layer.bias is not None:
        mean = mean + ops.cast(layer.bias, mean.dtype)
    return activation_moments(layer.activation, Moments(mean, variance))


@rule(kd_layers.ConcreteDropout)
def _concrete_dropout(layer, moments):
    # The relaxed mask's scale s(u) = (1 - sigmoid((logit p + logit u) / t)) / (1 - p), u
    # uniform: its first two moments by the midpoint rule on 4096 points of u.
    p = ops.cast(ops.sigmoid(layer.p_logit), "float32")
    u = (np.arange(4096, dtype="float32") + 0.5) / 4096
    eps = 1e-7  # as the layer's own _EPS
    drop = ops.sigmoid((ops.log(p + eps) - ops.log(1 - p + eps) + np.log(u + eps) - np.log(1 - u + eps)) / layer.temperature)
    scale = (1.0 - drop) / (1.0 - p)
    dtype = moments.mean.dtype
    noisy = multiplicative(moments, ops.cast(ops.mean(scale), dtype), ops.cast(ops.mean(ops.square(scale)), dtype))
    inner = _rule_for(layer.layer)
    if inner is None:
        raise ValueError(
            f"predict_moments has no propagation rule for '{layer.layer.name}' ({type(layer.layer).__name__}), "
            f"the layer ConcreteDropout '{layer.name}' wraps. Use kd.predict_mc."
        )
    return inner(layer.layer, noisy)


# --- Linear layers ------------------------------------------------------------


@rule(keras.layers.Dense)
def _dense(layer, moments):
    letters = "abcdefgh"[: len(moments.mean.shape) - 1]
    return _linear(layer, moments, f"{letters}y,yz->{letters}z")


@rule(keras.layers.EinsumDense)
def _einsum_dense(layer, moments):
    return _linear(layer, moments, layer.equation)


def _linear(layer, moments, equation, activation=None, columns=None):
    """A linear layer `einsum(equation, x, kernel) + bias`, then its activation (or `activation`).

    `columns`: a slice of the kernel's (and bias') last axis, to propagate some outputs only.
    """
    activation = layer.activation if activation is None else activation
    if getattr(layer, "quantization_mode", None):
        # `kernel` would be the integer codes, without their scales.
        raise ValueError(
            f"predict_moments does not propagate through quantized layer '{layer.name}' "
            f"({layer.quantization_mode}). Use kd.predict_mc."
        )
    kernel = ops.cast(layer.kernel, moments.mean.dtype)
    bias = layer.bias
    if columns is not None:
        kernel, bias = kernel[..., columns], bias[..., columns]
    mean = ops.einsum(equation, moments.mean, kernel)
    if bias is not None:
        mean = mean + ops.cast(bias, mean.dtype)
    if moments.variance is None:
        return activation_moments(activation, Moments(mean))
    if moments.bernoulli is not None:
        exact = _dropped_inputs_moments(activation, equation, moments.bernoulli, kernel, mean)
        if exact is not None:
            return exact
    covariance = _linear_covariance(equation, moments, kernel)
    if covariance is not None:
        variance = ops.diagonal(covariance, axis1=-2, axis2=-1)
    else:
        variance = ops.einsum(equation, moments.variance, ops.square(kernel))
    return activation_moments(activation, Moments(mean, variance, covariance))


@rule(kd_layers.GaussianHead)
def _gaussian_head(layer, moments):
    """Means: the linear map's moments; variances: the moments of softplus + floor of it.

    Each half is its own linear map, so drop patterns are enumerated through the variance's
    softplus too (exact), else the Gaussian's moments by quadrature.
    """
    letters = "abcdefgh"[: len(moments.mean.shape) - 1]
    equation = f"{letters}y,yz->{letters}z"
    units = layer.units
    halves = (
        _linear(layer, moments, equation, keras.activations.linear, columns=slice(0, units)),
        _linear(layer, moments, equation, layer.variance_of, columns=slice(units, 2 * units)),
    )
    halves = [_at_least_float32(Moments(half.mean, half.variance_or_zeros())) for half in halves]
    return Moments(
        ops.concatenate([half.mean for half in halves], axis=-1),
        ops.concatenate([half.variance for half in halves], axis=-1),
    )


def _is_gaussian_variance(function):
    """Whether `function` is a GaussianHead's `variance_of` (softplus + floor: elementwise)."""
    return getattr(function, "__func__", None) is kd_layers.GaussianHead.variance_of


def _is_elementwise(function):
    return (
        function is keras.activations.relu
        or any(function is known for known in _ELEMENTWISE_ACTIVATIONS)
        or _is_gaussian_variance(function)
    )


# Drop patterns enumerated (at most this many dropped inputs), when the patterns left out
# hold at most DROP_PATTERN_RESIDUAL of the probability and the tensors stay small.
MAX_DROPPED_INPUTS = 4
DROP_PATTERN_RESIDUAL = 1e-3
DROP_PATTERN_ENTRIES_PER_ROW = 2**16


def _dropped_inputs_moments(activation, equation, bernoulli, kernel, mean):
    """Exact moments of `activation(einsum(x * z / q, W) + b)` for deterministic x, z ~ Bernoulli(q).

    The pre-activation is a mixture over drop patterns, not a Gaussian (a few dropped inputs
    at a low rate: UCI's input dropout). Patterns with up to MAX_DROPPED_INPUTS drops are
    enumerated when the rest are negligible; the activation's mean, variance and (when
    tracked) covariance are then exact mixture moments. Returns None where this does not
    apply (the Gaussian rules take over).
    """
    x, rate = bernoulli
    elementwise = _is_elementwise(activation)
    inputs, rest = equation.replace(" ", "").split(",")
    kernel_letters, outputs = rest.split("->")
    reduced = inputs[-1]
    n = x.shape[-1]
    if not (elementwise or activation is keras.activations.linear) or n is None or rate <= 0:
        return None
    if set(inputs) - set(outputs) != {reduced} or "." in equation:
        return None
    keep = 1.0 - rate
    drops, mass = 0, keep**n
    while 1.0 - mass > DROP_PATTERN_RESIDUAL and drops < min(n, MAX_DROPPED_INPUTS):
        drops += 1
        mass += math.comb(n, drops) * rate**drops * keep ** (n - drops)
    if 1.0 - mass > DROP_PATTERN_RESIDUAL:
        return None
    patterns = [np.zeros(n, "float32")]
    weights = [keep**n]
    for count in range(1, drops + 1):
        for dropped in itertools.combinations(range(n), count):
            pattern = np.zeros(n, "float32")
            pattern[list(dropped)] = 1.0
            patterns.append(pattern)
            weights.append(rate**count * keep ** (n - count))
    inner = tuple(mean.shape[1:])
    if None in inner or len(patterns) * math.prod(inner) > DROP_PATTERN_ENTRIES_PER_ROW:
        return None
    dtype = mean.dtype
    patterns = ops.cast(np.stack(patterns), dtype)  # (P, n)
    weights = ops.cast(np.asarray(weights) / np.sum(weights), dtype)  # (P,), renormalised
    # Each input's contribution to each unit, then the pre-activation of every pattern.
    contributions = ops.einsum(f"{inputs},{kernel_letters}->{outputs[:-1]}{reduced}{outputs[-1]}", x, kernel)
    full = ops.sum(contributions, axis=-2)  # (..., units)
    pattern = next(c for c in "pqrstuvwxyz" if c not in equation)
    dropped = ops.einsum(
        f"{pattern}{reduced},{outputs[:-1]}{reduced}{outputs[-1]}->{outputs[:-1]}{pattern}{outputs[-1]}",
        patterns,
        contributions,
    )
    offset = mean - full  # the bias, broadcast as the layer adds it
    values = ops.expand_dims(full, -2) - dropped
    values = activation(values / keep + ops.expand_dims(offset, -2))  # (..., P, units)
    shape = (1,) * (len(values.shape) - 2) + (-1, 1)
    weighted = values * ops.reshape(weights, shape)
    result_mean = ops.sum(weighted, axis=-2)
    variance = ops.maximum(ops.sum(weighted * values, axis=-2) - ops.square(result_mean), 0.0)
    covariance = None
    units = values.shape[-1]
    if units is not None and units <= _covariance_units.get() and math.prod(inner[:-1] or (1,)) * units**2 <= COVARIANCE_ENTRIES_PER_ROW:
        second = ops.einsum("...pa,...pb->...ab", weighted, values)
        covariance = second - ops.expand_dims(result_mean, -1) * ops.expand_dims(result_mean, -2)
        covariance = _with_diagonal(covariance, variance)
    return Moments(result_mean, variance, covariance)


def _linear_covariance(equation, moments, kernel):
    """The output covariance across the last axis, when tracked (see `covariance_units`)."""
    inputs, rest = equation.replace(" ", "").split(",")
    kernel_letters, outputs = rest.split("->")
    reduced, produced = inputs[-1], outputs[-1]
    units = (moments.mean.shape[-1], kernel.shape[kernel_letters.index(produced)] if produced in kernel_letters else None)
    inner = tuple(moments.mean.shape[1:-1])
    limit = _covariance_units.get()
    if not (
        limit
        and "." not in equation
        and set(inputs) - set(outputs) == {reduced}
        and produced in kernel_letters
        and produced not in inputs
        and all(n is not None and n <= limit for n in units)
        and None not in inner
        and math.prod(inner) * max(units) ** 2 <= COVARIANCE_ENTRIES_PER_ROW
    ):
        return None
    free = [c for c in "pqrstuvwxyz" if c not in equation]
    reduced2, produced2 = free[0], free[1]
    kernel2 = kernel_letters.replace(produced, produced2)
    if moments.covariance is None:
        # Independent inputs: Cov(y_h, y_g) = sum_d v_d W_dh W_dg.
        return ops.einsum(f"{inputs},{kernel_letters},{kernel2}->{outputs}{produced2}", moments.variance, kernel, kernel)
    kernel2 = kernel2.replace(reduced, reduced2)
    return ops.einsum(
        f"{inputs}{reduced2},{kernel_letters},{kernel2}->{outputs}{produced2}", moments.covariance, kernel, kernel
    )


@rule(keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
def _conv(layer, moments):
    if layer.padding == "causal":
        raise ValueError(f"predict_moments does not propagate causal convolution '{layer.name}' yet. Use kd.predict_mc.")
    kernel = ops.cast(layer.kernel, moments.mean.dtype)
    mean = layer.convolution_op(moments.mean, kernel)
    variance = layer.convolution_op(moments.variance_or_zeros(), ops.square(kernel))
    if layer.use_bias:
        mean = mean + _channel_broadcast(ops.cast(layer.bias, mean.dtype), layer.data_format, ops.ndim(mean))
    return activation_moments(layer.activation, Moments(mean, variance))


@rule(keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)
def _depthwise_conv(layer, moments):
    # Each output channel reads one input channel: exact for independent inputs.
    def convolve(x, kernel):
        return ops.depthwise_conv(
            x, kernel, strides=layer.strides, padding=layer.padding,
            dilation_rate=layer.dilation_rate, data_format=layer.data_format,
        )

    return _convolution(layer, moments, convolve, [layer.kernel])


@rule(keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)
def _separable_conv(layer, moments):
    # Depthwise then pointwise: the depthwise outputs at one position come from different
    # input channels, so they are independent too, and the variance is exact.
    def convolve(x, depthwise, pointwise):
        return ops.separable_conv(
            x, depthwise, pointwise, strides=layer.strides, padding=layer.padding,
            dilation_rate=layer.dilation_rate, data_format=layer.data_format,
        )

    return _convolution(layer, moments, convolve, [layer.depthwise_kernel, layer.pointwise_kernel])


def _convolution(layer, moments, convolve, kernels):
    if layer.padding == "causal":
        raise ValueError(f"predict_moments does not propagate causal convolution '{layer.name}' yet. Use kd.predict_mc.")
    kernels = [ops.cast(kernel, moments.mean.dtype) for kernel in kernels]
    mean = convolve(moments.mean, *kernels)
    variance = convolve(moments.variance_or_zeros(), *[ops.square(kernel) for kernel in kernels])
    if layer.use_bias:
        mean = mean + _channel_broadcast(ops.cast(layer.bias, mean.dtype), layer.data_format, ops.ndim(mean))
    return activation_moments(layer.activation, Moments(mean, variance))


def _channel_broadcast(vector, data_format, ndim):
    if data_format == "channels_first":
        return ops.reshape(vector, (1, -1) + (1,) * (ndim - 2))
    return vector


@rule(keras.layers.BatchNormalization)
def _batch_normalization(layer, moments):
    # Inference mode: a per-channel affine map with the moving statistics.
    dtype = moments.mean.dtype
    shape = [1] * len(moments.mean.shape)
    shape[layer.axis] = -1
    scale = ops.rsqrt(ops.cast(layer.moving_variance, dtype) + layer.epsilon)
    if layer.scale:
        scale = scale * ops.cast(layer.gamma, dtype)
    shift = -ops.cast(layer.moving_mean, dtype) * scale
    if layer.center:
        shift = shift + ops.cast(layer.beta, dtype)
    scale, shift = ops.reshape(scale, shape), ops.reshape(shift, shape)
    return Moments(moments.mean * scale + shift, moments.variance_or_zeros() * ops.square(scale))


@rule(keras.layers.LayerNormalization)
def _layer_normalization(layer, moments):
    # Approximation: the normalising statistics of each row are those of its mean plus the
    # average variance, treated as constants.
    if getattr(layer, "rms_scaling", False):
        raise ValueError(f"predict_moments does not propagate RMS-scaled '{layer.name}' yet. Use kd.predict_mc.")
    m, v = moments.mean, moments.variance_or_zeros()
    ndim = len(m.shape)
    axes = [axis % ndim for axis in (layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis])]
    row_mean = ops.mean(m, axis=axes, keepdims=True)
    n = ops.cast(ops.size(m) // ops.size(row_mean), m.dtype)
    average_variance = ops.mean(v, axis=axes, keepdims=True)
    row_variance = ops.var(m, axis=axes, keepdims=True) + average_variance * (1 - 1 / n)
    scale = ops.rsqrt(row_variance + layer.epsilon)
    # x_i minus the row's mean, which shares x_i: Var = v_i (1 - 2/n) + sum(v) / n^2.
    centred_variance = v * (1 - 2 / n) + average_variance / n
    mean, variance = (m - row_mean) * scale, centred_variance * ops.square(scale)
    shape = [m.shape[axis] if axis in axes else 1 for axis in range(ndim)]  # as Keras broadcasts gamma
    if layer.gamma is not None:
        gamma = ops.reshape(ops.cast(layer.gamma, m.dtype), shape)
        mean, variance = mean * gamma, variance * ops.square(gamma)
    if layer.beta is not None:
        mean = mean + ops.reshape(ops.cast(layer.beta, m.dtype), shape)
    return Moments(mean, variance)


# --- Activations --------------------------------------------------------------


def activation_moments(function, moments):
    """Moments of `function(x)` for Gaussian `x` with the given moments.

    Functions are recognised by identity (a function merely named "relu" is not
    Keras' ReLU); a layer used as an activation takes its own rule; anything
    else is refused.
    """
    if moments.variance is None:
        return Moments(function(moments.mean))
    if function is keras.activations.linear:
        return Moments(moments.mean, moments.variance, moments.covariance)
    if function is keras.activations.relu:
        return relu_moments(moments)
    if function in (keras.activations.softmax, keras.activations.log_softmax):
        result = _sampled_moments(function, moments)
    elif isinstance(function, keras.layers.Layer) and _rule_for(function) is not None:
        return _rule_for(function)(function, moments)
    elif any(function is known for known in _ELEMENTWISE_ACTIVATIONS) or _is_gaussian_variance(function):
        result = gauss_hermite_moments(function, moments)
    else:
        raise ValueError(
            f"predict_moments has no rule for the activation {_name(function)!r} (not an elementwise Keras "
            "activation it knows). Use kd.predict_mc."
        )
    if function in (keras.activations.softmax, keras.activations.sigmoid):
        result.logits = moments  # classification measures come from the logits' Gaussian
    return result


# Elementwise Keras activations: their moments by Gauss-Hermite quadrature.
_ELEMENTWISE_ACTIVATIONS = tuple(
    getattr(keras.activations, name)
    for name in (
        "sigmoid", "tanh", "gelu", "softplus", "softsign", "elu", "selu", "silu", "swish", "exponential",
        "hard_sigmoid", "hard_silu", "hard_swish", "leaky_relu", "relu6", "mish", "celu", "log_sigmoid",
        "hard_tanh", "tanh_shrink", "squareplus", "sparse_plus", "soft_shrink", "hard_shrink",
    )
    if hasattr(keras.activations, name)
)


def relu_moments(moments):
    """Exact moments of max(x, 0) for Gaussian x (rectified Gaussian)."""
    m, v = moments.mean, ops.maximum(moments.variance, 1e-12)
    s = ops.sqrt(v)
    z = m / s
    cdf = 0.5 * (1.0 + ops.erf(z / math.sqrt(2.0)))
    pdf = ops.exp(-0.5 * ops.square(z)) / math.sqrt(2.0 * math.pi)
    mean = m * cdf + s * pdf
    second = (ops.square(m) + v) * cdf + m * s * pdf
    variance = ops.maximum(second - ops.square(mean), 0.0)
    return Moments(mean, variance, _activation_covariance(moments.covariance, cdf, variance))


def _activation_covariance(covariance, gain, variance):
    """Off the diagonal, first order: Cov(f(x_i), f(x_j)) ~ E[f'(x_i)] E[f'(x_j)] Cov(x_i, x_j)."""
    if covariance is None:
        return None
    scaled = covariance * ops.expand_dims(gain, -1) * ops.expand_dims(gain, -2)
    return _with_diagonal(scaled, variance)


def gauss_hermite_moments(function, moments):
    """Moments of an elementwise `function(x)`, Gaussian x, by 32-point Gauss-Hermite."""
    m, s = moments.mean, ops.sqrt(ops.maximum(moments.variance, 0.0))
    mean = ops.zeros_like(m)
    second = ops.zeros_like(m)
    stein = ops.zeros_like(m)  # E[f(x) (x - m)] / s^2 = E[f'(x)] (Stein's lemma)
    for node, weight in zip(_HERMITE_NODES, _HERMITE_WEIGHTS):
        value = function(m + (math.sqrt(2.0) * float(node)) * s)
        mean = mean + (float(weight) / math.sqrt(math.pi)) * value
        second = second + (float(weight) / math.sqrt(math.pi)) * ops.square(value)
        if moments.covariance is not None:
            stein = stein + (float(weight) * float(node) * math.sqrt(2.0 / math.pi)) * value
    variance = ops.maximum(second - ops.square(mean), 0.0)
    covariance = None
    if moments.covariance is not None:
        covariance = _activation_covariance(moments.covariance, stein / ops.maximum(s, 1e-6), variance)
    return Moments(mean, variance, covariance)


def _sampled_moments(function, moments):
    samples = logit_samples(moments, LOGIT_SAMPLES)  # (S, ...)
    values = function(samples)
    return Moments(ops.mean(values, axis=0), ops.var(values, axis=0))


def logit_samples(moments, num_samples, seed=0):
    """`(num_samples, ...)` draws of a Gaussian with the given moments (common random numbers)."""
    shape = tuple(moments.mean.shape[1:])
    if None in shape:
        raise ValueError(
            f"predict_moments draws the logits of a fixed shape; these have shape {shape}. Use kd.predict_mc."
        )
    noise = ops.cast(logit_noise(num_samples, shape, seed)[:, None], moments.mean.dtype)
    return moments.mean[None] + noise * ops.sqrt(ops.maximum(moments.variance_or_zeros(), 0.0))[None]


def logit_noise(num_samples, shape, seed=0):
    """The standard normal draws shared by every row: `(num_samples,) + shape`, float32."""
    return np.random.default_rng(seed).standard_normal((num_samples,) + tuple(shape)).astype("float32")


def _name(function):
    return getattr(function, "__name__", type(function).__name__).lower()


@rule(keras.layers.Activation)
def _activation_layer(layer, moments):
    return activation_moments(layer.activation, moments)


@rule(keras.layers.ReLU, keras.layers.LeakyReLU, keras.layers.ELU, keras.layers.PReLU)
def _elementwise_layer(layer, moments):
    if isinstance(layer, keras.layers.ReLU) and (
        layer.max_value is None and float(layer.negative_slope) == 0 and float(layer.threshold) == 0
    ):
        return relu_moments(moments)
    return gauss_hermite_moments(layer, moments)


@rule(keras.layers.Softmax)
def _softmax_layer(layer, moments):
    axes = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
    if [axis % len(moments.mean.shape) for axis in axes] != [len(moments.mean.shape) - 1]:
        raise ValueError(f"predict_moments propagates softmax over the last axis only; '{layer.name}' has axis={layer.axis}.")
    result = _sampled_moments(layer, moments)
    result.logits = moments
    return result


# --- Shape, merge and pooling layers -------------------------------------------------


@rule(keras.layers.Flatten, keras.layers.Reshape, keras.layers.Permute, keras.layers.Identity)
def _rearrangement(layer, moments):
    return Moments(layer(moments.mean), layer(moments.variance_or_zeros()))


@rule(keras.layers.Concatenate)
def _concatenate(layer, inputs):
    return Moments(layer([x.mean for x in inputs]), layer([x.variance_or_zeros() for x in inputs]))


@rule(keras.layers.Add)
def _add(layer, inputs):
    # Independent summands (diagonal assumption): variances add.
    return Moments(layer([x.mean for x in inputs]), layer([x.variance_or_zeros() for x in inputs]))


@rule(
    keras.layers.AveragePooling1D,
    keras.layers.AveragePooling2D,
    keras.layers.AveragePooling3D,
)
def _average_pooling(layer, moments):
    # The mean of k independent entries: variance / k (exact away from padded borders).
    window = math.prod(layer.pool_size)
    return Moments(layer(moments.mean), layer(moments.variance_or_zeros()) / window)


@rule(keras.layers.MaxPooling1D, keras.layers.MaxPooling2D, keras.layers.MaxPooling3D)
def _max_pooling(layer, moments):
    # Clark's (1961) moments of the max of two Gaussians, folded over the window's entries
    # (each partial max taken as Gaussian again; entries independent): an approximation.
    ndim = len(moments.mean.shape)
    spatial = list(range(1, ndim - 1)) if layer.data_format == "channels_last" else list(range(2, ndim))
    sizes = [moments.mean.shape[axis] for axis in spatial]
    if None in sizes:
        raise ValueError(f"predict_moments max-pools fixed spatial sizes only; '{layer.name}' sees {sizes}.")
    pool, strides = tuple(layer.pool_size), tuple(layer.strides)
    mean, variance = moments.mean, moments.variance_or_zeros()
    if layer.padding == "same":
        outputs = [math.ceil(size / stride) for size, stride in zip(sizes, strides)]
        pads = [max((out - 1) * stride + k - size, 0) for out, stride, k, size in zip(outputs, strides, pool, sizes)]
        widths = [(0, 0)] * ndim
        for axis, pad in zip(spatial, pads):
            widths[axis] = (pad // 2, pad - pad // 2)
        # Padded entries never win: a very low mean, no variance.
        mean = ops.pad(mean, widths, constant_values=-1e9)
        variance = ops.pad(variance, widths)
        sizes = [size + pad for size, pad in zip(sizes, pads)]
    outputs = [(size - k) // stride + 1 for size, k, stride in zip(sizes, pool, strides)]
    best = None
    for offset in itertools.product(*[range(k) for k in pool]):
        index = [slice(None)] * ndim
        for axis, start, stride, out in zip(spatial, offset, strides, outputs):
            index[axis] = slice(start, start + stride * (out - 1) + 1, stride)
        entry = (mean[tuple(index)], variance[tuple(index)])
        best = entry if best is None else _clark_max(best, entry)
    return Moments(best[0], ops.maximum(best[1], 0.0))


def _clark_max(first, second):
    (m1, v1), (m2, v2) = first, second
    a = ops.sqrt(ops.maximum(v1 + v2, 1e-12))
    alpha = (m1 - m2) / a
    cdf = 0.5 * (1.0 + ops.erf(alpha / math.sqrt(2.0)))
    pdf = ops.exp(-0.5 * ops.square(alpha)) / math.sqrt(2.0 * math.pi)
    mean = m1 * cdf + m2 * (1.0 - cdf) + a * pdf
    second_moment = (ops.square(m1) + v1) * cdf + (ops.square(m2) + v2) * (1.0 - cdf) + (m1 + m2) * a * pdf
    return mean, second_moment - ops.square(mean)


@rule(
    keras.layers.GlobalAveragePooling1D,
    keras.layers.GlobalAveragePooling2D,
    keras.layers.GlobalAveragePooling3D,
)
def _global_average_pooling(layer, moments):
    mean = layer(moments.mean)
    entries = ops.cast(ops.size(moments.mean) // ops.size(mean), mean.dtype)
    return Moments(mean, layer(moments.variance_or_zeros()) / entries)


# --- predict_moments -------------------------------------------------------------------

DEFAULT_BATCH_ROWS = 1024
_compiled_propagators = weakref.WeakKeyDictionary()


class MomentPrediction(MCPrediction):
    """An `MCPrediction` from propagated moments: `interval(level)` is the Gaussian's, at any level."""

    def interval(self, level=0.95):
        if not 0 < float(level) < 1:
            raise ValueError(
                f"Invalid value received for argument `level`. Expected a float in (0, 1). Received: {level!r}"
            )
        z = statistics.NormalDist().inv_cdf(0.5 + float(level) / 2)
        lower, upper = self.mean - z * self.stddev, self.mean + z * self.stddev
        if self.task != "regression":
            lower, upper = np.clip(lower, 0.0, 1.0), np.clip(upper, 0.0, 1.0)
        return lower, upper


def predict_moments(
    model,
    x,
    *,
    batch_size=None,
    task="auto",
    from_logits=False,
    tau=None,
    covariance="auto",
    variance_output=None,
    variance_kind=None,
):
    """MC dropout's predictive mean and variance without sampling, in one forward pass.

    Every tensor that noise reaches carries a mean and a diagonal variance
    through the model (moment propagation; this module's docstring states the
    approximations and references); layers upstream of the first stochastic
    layer run once, as they are. Regression outputs get the propagated mean
    and variance, and Gaussian intervals at any level. Classification
    outputs (softmax/sigmoid, or logits with `from_logits=True`) get the
    measures of `predict_mc` computed from 256 draws of the logits' Gaussian
    (the output layer's cost only). `interval(level)` is the Gaussian's
    central interval of each output at any level (clipped to [0, 1] for
    probabilities).

    Args:
        model: a Sequential or functional Keras model with at least one
            stochastic layer.
        x: inputs: an array, a list or dict of arrays, or a `tf.data.Dataset`.
        batch_size: rows per compiled call (default 1024).
        task: "auto", "regression" or "classification", as in `predict_mc`.
        from_logits: the outputs are logits (classification).
        tau: observation precision; adds `1 / tau` to `variance` (regression).
        covariance: "auto" tracks the full covariance across the units of
            dense layers of at most 128 units (exact through linear maps,
            first order through activations: the correlations that shared
            dropout masks create, which a diagonal drops, and which made the
            variance of a 128-unit MLP come out about half of MC's);
            "diagonal" treats all entries as independent (cheapest). Wider
            layers, convolutions and merges are diagonal either way.
        variance_output, variance_kind: as in `predict_mc`. Gaussian outputs
            (these, or a `kd.layers.GaussianHead`'s) get
            `aleatoric_variance` (the propagated expectation of the predicted
            variance) and `epistemic_variance` (the propagated variance of
            the predicted mean); their intervals are Gaussian with the total
            variance (the mixture's first two moments).

    Returns:
        An `MCPrediction` (`samples` None), or a dict of them keyed by output
        name for multi-output models.

    Raises:
        ValueError: a layer that noise reaches has no propagation rule (the
            message names it; `predict_mc` handles any model), or bad arguments.

    Example:

    >>> import numpy as np, keras, keras_dropout as kd
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(8, activation="relu"),
    ...                           keras.layers.Dropout(0.5), keras.layers.Dense(1)])
    >>> result = kd.predict_moments(model, np.ones((4, 3), "float32"))
    >>> result.mean.shape, bool((result.variance > 0).all())
    ((4, 1), True)
    """
    from keras_dropout import mc

    mc._validate_task(task)
    mc._validate_tau(tau)
    if covariance not in ("auto", "diagonal"):
        raise ValueError(
            "Invalid value received for argument `covariance`. Expected 'auto' or 'diagonal'. "
            f"Received: covariance={covariance!r}"
        )
    covariance_units = FULL_COVARIANCE_UNITS if covariance == "auto" else 0
    rows_per_call = DEFAULT_BATCH_ROWS if batch_size is None else mc._validate_positive_int(batch_size, "batch_size")
    batches = mc.input_batches(model, x)
    mc._samplable_model(model, batches[0])
    heads = prediction_heads(
        model, task, from_logits, variance_output, variance_kind, tree.map_structure(lambda a: a[:1], batches[0])
    )
    propagator = _compiled_propagator(model, heads, from_logits, covariance_units)
    rows_per_call, padded_rows = mc.call_layout(max(mc._num_rows(b) for b in batches), rows_per_call)
    parts = None
    for batch in batches:
        for start in range(0, mc._num_rows(batch), rows_per_call):
            rows = tree.map_structure(lambda a: a[start : start + rows_per_call], batch)
            count = mc._num_rows(rows)
            outputs = propagator(tree.map_structure(lambda a: mc._pad_rows(a, padded_rows), rows))
            outputs = [np.asarray(ops.convert_to_numpy(o))[:count] for o in outputs]
            parts = [[o] for o in outputs] if parts is None else [p + [o] for p, o in zip(parts, outputs)]
    flat = iter([np.concatenate(p) for p in parts])
    predictions = []
    for head in heads:
        if head.gaussian:
            mean, aleatoric, epistemic = next(flat), next(flat), np.maximum(next(flat), 0.0)
            if head.variance_kind == "variance":
                head.refuse_negative(aleatoric)  # its propagated mean
            variance = aleatoric + epistemic + (0.0 if tau is None else 1.0 / tau)
            measures = {"aleatoric_variance": aleatoric, "epistemic_variance": epistemic}
            predictions.append(MomentPrediction("regression", mean, variance, measures=measures))
            continue
        mean, variance = next(flat), np.maximum(next(flat), 0.0)
        if head.task == "regression":
            measures = {"epistemic_variance": variance}
            if tau is not None:
                variance = variance + 1.0 / tau
            predictions.append(MomentPrediction("regression", mean, variance, measures=measures))
        else:
            predictions.append(_classification_from_logits(head.task, mean, variance))
    if len(predictions) == 1:
        return predictions[0]
    return {head.name: prediction for head, prediction in zip(heads, predictions)}


def head_moments(model, heads, from_logits, moments, logits):
    """Per head, the propagated tensors `predict_moments` reads.

    A plain output: `[mean, variance]` (of the logits for a classifier given
    probabilities); a Gaussian: `[mean, aleatoric variance, epistemic
    variance]`, where the aleatoric part is the expected predicted variance
    (`E[exp(s)] = exp(m + v / 2)` for a Gaussian log-variance `s`).
    """
    flat = tree.flatten(moments)
    tensors = []
    for head in heads:
        output = flat[head.index]
        if head.variance_kind == "head":
            mean, noise = output.mean, output.variance_or_zeros()
            tensors.append([mean[..., : head.units], mean[..., head.units :], noise[..., : head.units]])
        elif head.gaussian:
            spread = flat[head.variance_index]
            if head.variance_kind == "log":
                aleatoric = ops.exp(spread.mean + 0.5 * spread.variance_or_zeros())
            else:
                aleatoric = spread.mean
            tensors.append([output.mean, aleatoric, output.variance_or_zeros()])
        else:
            if head.task != "regression" and not from_logits:
                output = logits.get(id(output.mean))
                if output is None:
                    raise ValueError(
                        f"predict_moments needs the logits of model '{model.name}''s classification "
                        f"output '{head.name}': its softmax/sigmoid must be a Dense/Conv activation or an "
                        "Activation/Softmax layer that noise reaches. Pass from_logits=True for a logits "
                        "output, or use kd.predict_mc."
                    )
            tensors.append([output.mean, output.variance_or_zeros()])
    return tensors


def moment_outputs(model, inputs, heads, from_logits, covariance_units=FULL_COVARIANCE_UNITS, check_variance=None):
    """The `mc` signature's outputs computed by moment propagation, in graph code.

    Regression outputs: the propagated `mean`, `variance`, `stddev` (Gaussian
    outputs also `aleatoric_variance`, `epistemic_variance`); classification
    outputs: `kd.uncertainty.summarize` of the logits' Gaussian draws (the
    draws `predict_moments` makes). Names as in `mc` (prefixed `<output>_`
    for several predictions). Used by `kd.serving.export(..., moments=True)`;
    `check_variance(variances, head)`, if given, guards a "variance" output's propagated
    mean (the signature refuses negative values, as `predict_moments` does).
    """
    from keras_dropout import uncertainty

    moments, logits = propagate(model, inputs, covariance_units)
    outputs = {}
    for head, tensors in zip(heads, head_moments(model, heads, from_logits, moments, logits)):
        prefix = "" if len(heads) == 1 else f"{head.name}_"
        if head.gaussian:
            mean, aleatoric, epistemic = tensors[0], tensors[1], ops.maximum(tensors[2], 0.0)
            if head.variance_kind == "variance" and check_variance is not None:
                aleatoric = check_variance(aleatoric, head)
            variance = aleatoric + epistemic
            stats = {
                "mean": mean,
                "variance": variance,
                "stddev": ops.sqrt(variance),
                "aleatoric_variance": aleatoric,
                "epistemic_variance": epistemic,
            }
        elif head.task == "regression":
            variance = ops.maximum(tensors[1], 0.0)
            stats = {"mean": tensors[0], "variance": variance, "stddev": ops.sqrt(variance)}
        else:
            draws = ops.moveaxis(logit_samples(Moments(*tensors), LOGIT_SAMPLES), 0, 1)  # (rows, draws, ...)
            stats = uncertainty.summarize(draws, head.task, True)
        for key in head.statistic_names():
            outputs[prefix + key] = stats[key]
    return outputs


def _classification_from_logits(task, mean, variance):
    from keras_dropout import mc

    # No sample quantiles (MomentPrediction's intervals are Gaussian): sorting the draws of
    # every row was most of the cost.
    accumulator = mc._Accumulator(task, None, (), False, from_logits=True)
    noise = logit_noise(LOGIT_SAMPLES, mean.shape[1:]).astype(mean.dtype)
    rows_per_block = max(1, 2**22 // noise.size)
    for start in range(0, len(mean), rows_per_block):
        m, v = mean[start : start + rows_per_block], variance[start : start + rows_per_block]
        accumulator.add(m[:, None] + noise[None] * np.sqrt(v)[:, None])
    result = accumulator.result()
    return MomentPrediction(result.task, result.mean, result.variance, measures=result._measures)


def _compiled_propagator(model, heads, from_logits, covariance_units):
    cache = _compiled_propagators.setdefault(model, {})
    key = (tuple((h.task, h.index, h.variance_index, h.variance_kind) for h in heads), from_logits, covariance_units)
    if key in cache:
        return cache[key]
    # Held weakly, like predict_mc's samplers: the cache must not keep the model alive.
    model_ref = weakref.ref(model)

    def run(inputs):
        model = model_ref()
        moments, logits = propagate(model, inputs, covariance_units)
        return [t for tensors in head_moments(model, heads, from_logits, moments, logits) for t in tensors]

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        compiled = internals.omit_retracing_warning(tf.function(run, reduce_retracing=True, autograph=False))
    elif backend == "jax":
        import jax

        def stateless(values, inputs):
            with keras.StatelessScope(state_mapping=list(zip(model_ref().variables, values))):
                return run(inputs)

        jitted = jax.jit(stateless)

        def compiled(inputs):
            return jitted([v.value for v in model_ref().variables], inputs)

    else:
        compiled = run
    cache[key] = compiled
    return compiled
