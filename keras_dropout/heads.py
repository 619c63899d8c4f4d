"""What a model's outputs predict: the tasks, and the Gaussian (mean, variance) heads.

`predict_mc`, `predict_moments`, the serving signatures and the Beam handler
all report one prediction per `OutputHead`: a plain output (regression,
classification or multi-label), or a Gaussian whose mean and variance come
from one `kd.layers.GaussianHead` output or from two outputs of a stock
two-head model (`variance_output=`, `variance_kind=`).
"""

import warnings
import weakref

import keras
import numpy as np
from keras import ops
from keras import tree

from keras_dropout import _keras_internals as internals
from keras_dropout import uncertainty
from keras_dropout.layers.gaussian_head import GaussianHead

VARIANCE_KINDS = ("log", "variance")


class OutputHead:
    """One reported prediction.

    Attributes:
        name: the name it is reported under (the mean output's name).
        task: "regression", "classification" or "multilabel".
        index: flat index of the model output holding the mean (or the
            `GaussianHead` output).
        variance_index, variance_name: flat index and name of a stock
            model's variance output.
        variance_kind: None (a plain output), "head" (a `GaussianHead`:
            means then variances on the last axis), "log" or "variance".
        units: the Gaussian's units of a "head" (half the last axis).
    """

    def __init__(self, name, task, index, variance_index=None, variance_kind=None, units=None, variance_name=None):
        self.name = name
        self.variance_name = variance_name
        self.task = task
        self.index = index
        self.variance_index = variance_index
        self.variance_kind = variance_kind
        self.units = units

    @property
    def gaussian(self):
        return self.variance_kind is not None

    def statistic_names(self):
        """The statistics the `mc` and `moments` signatures return for this head."""
        if self.task != "regression":
            return ("mean", "variance", "stddev") + uncertainty.CLASSIFICATION_MEASURES
        if self.gaussian:
            return ("mean", "variance", "stddev", "aleatoric_variance", "epistemic_variance")
        return ("mean", "variance", "stddev")

    def split(self, flat_outputs):
        """`(means, variances or None)` of this head from the model's flat outputs.

        Works on NumPy arrays and backend tensors alike (`(rows, S, ...)`
        samples or `(rows, ...)` outputs). A "variance" output with negative
        entries is refused when the values are NumPy (graph callers assert).
        """
        output = flat_outputs[self.index]
        if self.variance_kind is None:
            return output, None
        output = _at_least_float32(output)
        if self.variance_kind == "head":
            if output.shape[-1] != 2 * self.units:
                raise ValueError(
                    f"Output '{self.name}' comes from a GaussianHead of {self.units} units, so its last "
                    f"axis should hold {2 * self.units} values (means, then variances); it has shape "
                    f"{tuple(output.shape)}."
                )
            variance = output[..., self.units :]
            if isinstance(variance, np.ndarray) and not (variance > 0).all():
                # A GaussianHead's variances are >= its floor > 0: this is not its output.
                raise ValueError(
                    f"Output '{self.name}' was taken for a GaussianHead's (means, then variances), but its "
                    "second half holds values <= 0. Return the GaussianHead's output itself from the model."
                )
            return output[..., : self.units], variance
        variance = _at_least_float32(flat_outputs[self.variance_index])
        if self.variance_kind == "log":
            variance = ops.exp(variance) if not isinstance(variance, np.ndarray) else np.exp(variance)
        elif isinstance(variance, np.ndarray):
            self.refuse_negative(variance)
        return output, variance

    @property
    def negative_variance_message(self):
        """What a "variance" output with negative values is told (locally and by the signatures)."""
        return f"The variance output '{self.variance_name}' (of '{self.name}') holds negative values"

    def refuse_negative(self, variances):
        """Raises `ValueError` if a "variance" output's NumPy values go below 0: not a variance."""
        if (variances < 0).any():
            raise ValueError(
                f"{self.negative_variance_message} (min {variances.min():.3g}), so it is not a variance. "
                "Pass variance_kind='log' if it predicts a log-variance, or give that output a positive "
                "activation (softplus)."
            )


def _at_least_float32(values):
    # exp() of a float16 log-variance overflows above 11; variances are reported in float32.
    if isinstance(values, np.ndarray):
        return values.astype(np.float32) if values.dtype.itemsize < 4 else values
    if keras.backend.standardize_dtype(values.dtype) in ("float16", "bfloat16"):
        return ops.cast(values, "float32")
    return values


def output_names(model):
    """The names of a model's outputs, in the order its outputs flatten.

    Dict outputs keep the keys the model was built with; list outputs are
    named after the layers that produce them.
    """
    structure = internals.output_structure(model)
    if isinstance(structure, dict):
        return [path[0] for path, _ in tree.flatten_with_path(structure)]
    outputs = getattr(model, "outputs", None) or []
    names = getattr(model, "output_names", None)
    if names and len(names) == len(outputs):
        return list(names)
    return [internals.producer(tensor)[0].name for tensor in outputs] or ["output"]


def _output_layer(tensor):
    """The layer that produced a model output, looking inside nested models and TimeDistributed."""
    layer, index = internals.producer(tensor)
    if isinstance(layer, keras.layers.TimeDistributed):
        return layer.layer
    nested_outputs = getattr(layer, "outputs", None) if isinstance(layer, keras.Model) else None
    if nested_outputs:
        # The output comes from a nested model (e.g. a classification head
        # Sequential): look at the layer that produced it inside.
        return _output_layer(tree.flatten(nested_outputs)[index])
    return layer


def _output_activation(tensor):
    layer = _output_layer(tensor)
    if isinstance(layer, keras.layers.Softmax):
        return "softmax"
    return getattr(getattr(layer, "activation", None), "__name__", None)


def output_tasks(model, task, from_logits):
    """One task per model output: regression, classification or multilabel."""
    outputs = getattr(model, "outputs", None)
    if not outputs:
        # A subclassed model: its activations are unknown, trust `task`.
        outputs = [None]
    tasks = []
    for tensor in tree.flatten(outputs):
        activation = _output_activation(tensor) if tensor is not None else None
        is_probability = activation in ("softmax", "sigmoid") or (
            tensor is None and task == "classification"
        )
        if task == "regression" or (task == "auto" and not (is_probability or from_logits)):
            tasks.append("regression")
        elif not (is_probability or from_logits):
            raise ValueError(
                "task='classification' needs probability outputs, but the "
                f"output of model '{model.name}' has activation "
                f"{activation!r}. Pass from_logits=True if it produces logits, "
                "or task='regression'."
            )
        elif activation == "sigmoid" or (from_logits and tensor is not None and tensor.shape[-1] == 1):
            tasks.append("multilabel")
        else:
            tasks.append("classification")
    return tasks


_warned_models = weakref.WeakSet()
_checked_subclassed = weakref.WeakKeyDictionary()  # subclassed model -> its verified GaussianHead


def _gaussian_head_outputs(model, sample_inputs=None):
    """`{flat output index: GaussianHead}` for outputs a GaussianHead produces."""
    outputs = getattr(model, "outputs", None)
    heads = [layer for layer in internals.flatten_layers(model) if isinstance(layer, GaussianHead)]
    if not heads:
        return {}
    if not outputs:
        return _subclassed_gaussian_output(model, heads, sample_inputs)
    found = {}
    for index, tensor in enumerate(tree.flatten(outputs)):
        layer = _output_layer(tensor)
        if isinstance(layer, GaussianHead):
            found[index] = layer
    inner = [head.name for head in heads if all(head is not layer for layer in found.values())]
    if inner and model not in _warned_models:
        _warned_models.add(model)
        warnings.warn(
            f"Model '{model.name}': GaussianHead layer(s) {inner} do not produce a model output directly "
            "(a layer follows them), so the outputs they feed are reported as plain outputs, without "
            "an aleatoric/epistemic split. Make the GaussianHead the output layer to get the split.",
            stacklevel=3,
        )
    return found


def _subclassed_gaussian_output(model, heads, sample_inputs):
    """A subclassed model's GaussianHead output: only when its output is that head's, checked by a call."""
    if len(heads) != 1 or sample_inputs is None:
        raise ValueError(
            f"Subclassed model '{model.name}' holds GaussianHead layer(s) {[h.name for h in heads]}, whose "
            "outputs predict_mc cannot locate in its outputs. Build it as a functional model (the head "
            "as an output layer), or return exactly one GaussianHead's output."
        )
    head = heads[0]
    if _checked_subclassed.get(model) is head:
        return {0: head}
    seen = []
    original_call = head.call

    def recording_call(*args, **kwargs):
        result = original_call(*args, **kwargs)
        seen.append(result)
        return result

    # One deterministic call, watching what the head returns.
    head.call = recording_call
    try:
        returned = model(sample_inputs, training=False)
    finally:
        del head.call
    flat = tree.flatten(returned)
    if (
        len(flat) != 1
        or len(seen) != 1
        or tuple(flat[0].shape) != tuple(seen[0].shape)
        or not np.array_equal(ops.convert_to_numpy(flat[0]), ops.convert_to_numpy(seen[0]))
    ):
        raise ValueError(
            f"Subclassed model '{model.name}' holds GaussianHead '{head.name}' but does not return its "
            "output alone (it returns several tensors, or a value computed from the head's), so means "
            "and variances cannot be told apart. Return the GaussianHead's output itself, or build a "
            "functional model."
        )
    # Checked once per model: a Beam worker calls predict_mc per batch.
    _checked_subclassed[model] = head
    return {0: head}


def prediction_heads(
    model, task="auto", from_logits=False, variance_output=None, variance_kind=None, sample_inputs=None
):
    """The predictions `predict_mc` reports for `model`, in output order.

    Args:
        model: a Keras model.
        task, from_logits: as in `predict_mc`.
        variance_output: None, the name of the output holding the other
            output's (log-)variance (models with two outputs), or a dict
            `{mean output name: variance output name}`.
        variance_kind: "log" (default when `variance_output` is given) or
            "variance": what the variance outputs hold.
        sample_inputs: a batch of inputs; a subclassed model holding a
            GaussianHead is called on it once, to check that it returns
            the head's output.

    Returns:
        A list of `OutputHead`.

    Example:

    ```python
    heads = prediction_heads(two_head_model, variance_output="log_var")
    [(h.name, h.variance_kind) for h in heads]   # [("mu", "log")]
    ```
    """
    names = output_names(model)
    pairs = _variance_pairs(model, names, variance_output, variance_kind)
    gaussian = _gaussian_head_outputs(model, sample_inputs)
    if gaussian and task == "classification":
        raise ValueError(
            f"task='classification', but model '{model.name}' ends in GaussianHead layer(s) "
            f"{[layer.name for layer in gaussian.values()]}: a Gaussian output is regression."
        )
    if gaussian and from_logits:
        raise ValueError(
            f"from_logits=True, but model '{model.name}' ends in GaussianHead layer(s) "
            f"{[layer.name for layer in gaussian.values()]}: a Gaussian output has no logits."
        )
    for mean_name, variance_name in pairs.items():
        for name in (mean_name, variance_name):
            if names.index(name) in gaussian:
                raise ValueError(
                    f"Output '{name}' of model '{model.name}' comes from a GaussianHead, which predicts "
                    "its own variance: do not name it in `variance_output`."
                )
    tasks = output_tasks(model, task, from_logits)
    variance_indices = {names.index(v) for v in pairs.values()}
    flat_outputs = tree.flatten(getattr(model, "outputs", None) or [])
    heads = []
    for index, (name, output_task) in enumerate(zip(names, tasks)):
        if index in variance_indices:
            continue
        if index in gaussian:
            heads.append(OutputHead(name, "regression", index, variance_kind="head", units=gaussian[index].units))
        elif name in pairs:
            variance_index = names.index(pairs[name])
            if output_task != "regression" or tasks[variance_index] != "regression":
                raise ValueError(
                    f"variance_output pairs '{name}' with '{pairs[name]}', but "
                    f"{'the mean' if output_task != 'regression' else 'the variance'} output is a "
                    "classification output (softmax/sigmoid): a Gaussian's mean and variance are regression outputs."
                )
            if flat_outputs:
                mean_shape = tuple(flat_outputs[index].shape[1:])
                variance_shape = tuple(flat_outputs[variance_index].shape[1:])
                if mean_shape != variance_shape:
                    raise ValueError(
                        f"variance_output: output '{pairs[name]}' (shape {variance_shape}) must have the "
                        f"shape of output '{name}' (shape {mean_shape}), one variance per mean."
                    )
            heads.append(
                OutputHead(
                    name,
                    "regression",
                    index,
                    variance_index=variance_index,
                    variance_kind=_kind(variance_kind),
                    variance_name=pairs[name],
                )
            )
        else:
            heads.append(OutputHead(name, output_task, index))
    return heads


def _kind(variance_kind):
    return "log" if variance_kind is None else variance_kind


def _variance_pairs(model, names, variance_output, variance_kind):
    """`{mean output name: variance output name}` from `variance_output`."""
    if variance_kind is not None and variance_kind not in VARIANCE_KINDS:
        raise ValueError(
            "Invalid value received for argument `variance_kind`. Expected 'log' or "
            f"'variance'. Received: variance_kind={variance_kind!r}"
        )
    if variance_output is None:
        if variance_kind is not None:
            raise ValueError(
                "`variance_kind` describes the output named by `variance_output`, which is "
                f"missing. Received: variance_output=None, variance_kind={variance_kind!r}"
            )
        return {}
    if isinstance(variance_output, str):
        if variance_output not in names:
            raise ValueError(
                "Invalid value received for argument `variance_output`. Expected one of model "
                f"'{model.name}''s outputs {names}. Received: variance_output={variance_output!r}"
            )
        if len(names) != 2:
            raise ValueError(
                f"variance_output={variance_output!r} names the variance of 'the other' output, but model "
                f"'{model.name}' has {len(names)} outputs {names}. Pass a dict "
                "{mean output: variance output} instead."
            )
        return {next(n for n in names if n != variance_output): variance_output}
    if isinstance(variance_output, dict) and variance_output:
        unknown = [n for pair in variance_output.items() for n in pair if n not in names]
        variances = list(variance_output.values())
        if unknown:
            raise ValueError(
                f"Invalid value received for argument `variance_output`: {unknown} are not outputs of "
                f"model '{model.name}' (outputs {names})."
            )
        clashes = set(variance_output) & set(variances)
        if len(set(variances)) != len(variances) or clashes or any(k == v for k, v in variance_output.items()):
            raise ValueError(
                "Invalid value received for argument `variance_output`: each output is a mean or a "
                f"variance of one other output. Received: variance_output={variance_output!r}"
            )
        return dict(variance_output)
    raise ValueError(
        "Invalid value received for argument `variance_output`. Expected an output name or a "
        f"dict {{mean output: variance output}}. Received: variance_output={variance_output!r}"
    )
