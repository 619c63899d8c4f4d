"""`export`: SavedModels whose signatures toggle Monte Carlo sampling.

Signatures (all `tensorflow/serving/predict`, inputs named after the model's
inputs):

- `serving_default`: the deterministic model.
- `mc`: the same inputs; `num_samples` fixed at export; batch-major outputs
  `mean`, `variance`, `stddev` (+ `predictive_entropy`, `expected_entropy`,
  `mutual_information`, `variation_ratio` for classifiers), prefixed with
  `<output>_` for multi-output models. Gaussian outputs (a `kd.layers.GaussianHead`,
  or a mean/variance pair named by `variance_output=`) add `aleatoric_variance` and
  `epistemic_variance`; a pair is one prediction under the mean's name.
- `mc_sample`: also a scalar `num_samples` (int32; 0 = deterministic pass,
  capped at `max_samples`) and a scalar `seed` (int64; same seed, same answer).

What TF Serving needs, and how it is met: core TF ops only (the masks are
integer hashes); no variable is written (layers take their seed from
`seed_scope`, never from their state variable; BatchNormalization runs in
inference mode); no XLA-compiled function (TF Serving refuses them on CPU
unless `--xla_cpu_compilation_enabled`); a warmup file with one request per
signature. The statistics come from `kd.uncertainty`, the code `predict_mc`
uses.
"""

import os
import shutil
import uuid

import keras
import numpy as np
import tensorflow as tf

from keras_dropout import _keras_internals
from keras_dropout import uncertainty
from keras_dropout.mc import _samplable_model
from keras_dropout.heads import prediction_heads
from keras_dropout.mc import _validate_task
from keras_dropout.mc import output_names
from keras_dropout.mc import TRACE_LOCK
from keras_dropout.mc import sample_chunk
from keras_dropout.sampling import deterministic_scope
from keras_dropout.serving.warmup import write_warmup_requests

SIGNATURE_NAMES = ("serving_default", "mc", "mc_sample")


def _input_specs(model):
    if not getattr(model, "inputs", None):
        # A subclassed model, called once on one tensor: one input, "inputs".
        shape = _keras_internals.called_input_shape(model)
        return {"inputs": tf.TensorSpec((None,) + tuple(shape[1:]), model.input_dtype, name="inputs")}
    structure = _keras_internals.input_structure(model)
    if isinstance(structure, dict):
        # Named by the keys the model is called with, as predict_mc takes them.
        return {
            key: tf.TensorSpec((None,) + tuple(tensor.shape[1:]), tensor.dtype, name=key)
            for key, tensor in structure.items()
        }
    specs = {}
    for tensor in model.inputs:
        name = tensor.name
        specs[name] = tf.TensorSpec((None,) + tuple(tensor.shape[1:]), tensor.dtype, name=name)
    return specs


def _call_inputs(model, inputs):
    """The model's call structure (tensor, list or dict) from named inputs."""
    if not getattr(model, "inputs", None):
        return inputs["inputs"]
    structure = _keras_internals.input_structure(model)
    if isinstance(structure, dict):
        # keras_hub tasks and backbones take a dict keyed like their inputs.
        return {key: inputs[key] for key in structure}
    names = [tensor.name for tensor in model.inputs]
    if len(names) == 1:
        return inputs[names[0]]
    return [inputs[name] for name in names]


def named_statistics(heads, flat_samples, from_logits):
    """The `mc` outputs: `kd.uncertainty.summarize` of each head's samples.

    Named as in `predict_mc`'s result, prefixed `<name>_` when the model
    reports several predictions; Gaussian heads add `aleatoric_variance`
    and `epistemic_variance`.
    """
    outputs = {}
    for head in heads:
        prefix = "" if len(heads) == 1 else f"{head.name}_"
        samples, variances = head.split(flat_samples)
        if head.variance_kind == "variance":
            variances = _checked_variances(variances, head)
        stats = uncertainty.summarize(samples, head.task, from_logits, sample_variances=variances)
        for key in head.statistic_names():
            outputs[prefix + key] = stats[key]
    return outputs


def _checked_variances(variances, head):
    # The same refusal as predict_mc's: a negative "variance" is a misnamed output, not a variance.
    check = tf.debugging.assert_non_negative(
        variances,
        message=head.negative_variance_message,
    )
    with tf.control_dependencies([check]):
        return tf.identity(variances)


def _moments_signature(model, heads, from_logits):
    """The `moments` signature's function: the `mc` outputs by moment propagation."""
    from keras_dropout.moments import moment_outputs

    def propagated(inputs):
        return moment_outputs(model, _call_inputs(model, inputs), heads, from_logits, check_variance=_checked_variances)

    return propagated


def _next_version(base_path):
    versions = [int(entry) for entry in os.listdir(base_path) if entry.isdigit()]
    return max(versions, default=0) + 1


def export(
    model,
    base_path,
    *,
    version=None,
    num_samples=32,
    max_samples=1024,
    task="auto",
    from_logits=False,
    warmup=True,
    batching=False,
    moments=False,
    variance_output=None,
    variance_kind=None,
):
    """Exports `model` as a TF-Serving-ready SavedModel with MC signatures.

    Writes `base_path/<version>/` atomically: the SavedModel is written to a
    hidden sibling folder and renamed into place, so a polling server never
    sees half a version. On object stores (gs://, s3://) rename is a copy and
    not atomic; export locally and upload the finished folder instead.

    Args:
        model: any Keras model `predict_mc` accepts (TensorFlow backend):
            single, list or dict inputs (signature inputs named after the
            input tensors, or after the dict keys), string inputs, RNNs, and
            subclassed models that were called once on one tensor ("inputs").
        base_path: the model's base directory (created if missing).
        version: integer version; default 1 for the first export, then the
            largest existing version + 1.
        num_samples: samples per request of the `mc` signature.
        max_samples: cap on `mc_sample`'s `num_samples` (INVALID_ARGUMENT
            above it).
        task: "auto", "regression" or "classification", as in `predict_mc`.
        from_logits: the outputs are logits (see `predict_mc`).
        warmup: write `assets.extra/tf_serving_warmup_requests`.
        batching: leave `mc_sample` out, so the export loads in TF Serving with
            `--enable_batching` (batching wraps every signature, and scalar
            inputs cannot be batched).
        moments: also write a `moments` signature: the `mc` outputs computed
            in one pass by `kd.predict_moments`' propagation (no sampling).
        variance_output, variance_kind: as in `predict_mc`: a stock model's
            output holding another's (log-)variance. Gaussian outputs (these,
            or a `kd.layers.GaussianHead`'s) get `aleatoric_variance` and
            `epistemic_variance` beside `mean`, `variance` and `stddev`.

    Returns:
        The path of the written version directory.

    Example:

    ```python
    path = kd.serving.export(model, "/models/my_model")   # /models/my_model/1
    ```
    """
    if keras.backend.backend() != "tensorflow":
        raise ValueError("kd.serving.export needs the TensorFlow backend (KERAS_BACKEND=tensorflow).")
    for name, value, low in (("num_samples", num_samples, 1), ("max_samples", max_samples, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(
                f"Invalid value received for argument `{name}`. Expected an "
                f"integer >= {low}. Received: {name}={value!r}"
            )
    if not isinstance(moments, bool):
        raise ValueError(f"Invalid value received for argument `moments`. Expected a bool. Received: moments={moments!r}")
    if num_samples > max_samples:
        raise ValueError(
            f"Invalid value received for argument `num_samples`. Expected at "
            f"most max_samples={max_samples}. Received: num_samples={num_samples}"
        )
    _validate_task(task)
    if version is not None and (
        isinstance(version, bool) or not isinstance(version, (int, np.integer)) or version < 0
    ):
        raise ValueError(
            "Invalid value received for argument `version`. Expected a "
            f"non-negative integer. Received: version={version!r}"
        )
    if not getattr(model, "inputs", None) and _keras_internals.called_input_shape(model) is None:
        raise ValueError(
            f"Cannot export model '{getattr(model, 'name', model)}': its inputs are unknown "
            "(a subclassed model never called on one input tensor, or a Sequential model "
            "without an Input). Build it with keras.Input, or call it once on a batch, so "
            "the signatures can name and shape their inputs."
        )
    _samplable_model(model)
    specs = _input_specs(model)
    sample_inputs = None
    if not getattr(model, "inputs", None):
        # A subclassed model holding a GaussianHead is called once, to check it returns the head's output.
        spec = specs["inputs"]
        sample_inputs = np.zeros((1,) + tuple(spec.shape[1:]), spec.dtype.as_numpy_dtype)
    heads = prediction_heads(model, task, from_logits, variance_output, variance_kind, sample_inputs)

    def deterministic(inputs):
        with deterministic_scope():
            outputs = model(_call_inputs(model, inputs), training=False)
        return dict(zip(output_names(model), keras.tree.flatten(outputs)))

    def draw(inputs, count, seed_words):
        # predict_mc's own core: rows are keyed by their position in the
        # request, so mc_sample(seed=s) equals predict_mc(rows, seed=s).
        call_inputs = _call_inputs(model, inputs)
        rows = tf.shape(tf.nest.flatten(call_inputs)[0])[0]
        row_words = tf.stack([tf.range(rows), tf.zeros([rows], tf.int32)], axis=1)
        samples = sample_chunk(model, call_inputs, seed_words, row_words, count)
        return keras.tree.flatten(samples)

    def seed_words_of(seed):
        """(low, high, first sample) uint32 words of an int64 seed, as predict_mc's."""
        low = tf.bitwise.bitwise_and(seed, tf.constant(0xFFFFFFFF, tf.int64))
        high = tf.bitwise.bitwise_and(tf.bitwise.right_shift(seed, 32), tf.constant(0xFFFFFFFF, tf.int64))
        return tf.stack([tf.cast(low, tf.uint32), tf.cast(high, tf.uint32), tf.constant(0, tf.uint32)])

    def mc(inputs):
        # A stateful random op, not a variable: fresh masks per request.
        seed = tf.random.uniform([], maxval=2**31 - 1, dtype=tf.int64)
        return named_statistics(heads, draw(inputs, num_samples, seed_words_of(seed)), from_logits)

    def mc_sample(inputs, num_samples_, seed):
        checks = [
            tf.debugging.assert_non_negative(
                num_samples_, message="num_samples must be >= 0"
            ),
            tf.debugging.assert_less_equal(
                num_samples_,
                tf.constant(max_samples, tf.int32),
                message=f"num_samples must be <= max_samples={max_samples}",
            ),
        ]
        with tf.control_dependencies(checks):
            count = tf.identity(num_samples_)

        def sampled():
            return draw(inputs, count, seed_words_of(seed))

        def single_pass():
            return [tf.expand_dims(output, 1) for output in deterministic(inputs).values()]

        samples = tf.cond(count > 0, sampled, single_pass)
        return named_statistics(heads, samples, from_logits)

    propagated = _moments_signature(model, heads, from_logits) if moments else None

    with TRACE_LOCK:  # see keras_dropout.mc.TRACE_LOCK
        return _write_export(
            model, base_path, version, specs, deterministic, mc, mc_sample, batching, warmup, propagated
        )


def _write_export(model, base_path, version, specs, deterministic, mc, mc_sample, batching, warmup, propagated):
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", deterministic, input_signature=[specs])
    archive.add_endpoint("mc", mc, input_signature=[specs])
    if propagated is not None:
        archive.add_endpoint("moments", propagated, input_signature=[specs])
    if not batching:
        archive.add_endpoint(
            "mc_sample",
            mc_sample,
            input_signature=[
                specs,
                tf.TensorSpec([], tf.int32, name="num_samples"),
                tf.TensorSpec([], tf.int64, name="seed"),
            ],
        )

    base_path = os.fspath(base_path)
    os.makedirs(base_path, exist_ok=True)
    if version is None:
        version = _next_version(base_path)
    final_path = os.path.join(base_path, str(int(version)))
    if os.path.exists(final_path):
        raise ValueError(f"Version {version} already exists at {final_path}; versions are immutable.")
    # A dot-prefixed, non-integer name: TF Serving and our server ignore it.
    staging_path = os.path.join(base_path, f".tmp-{uuid.uuid4().hex}")
    try:
        archive.write_out(staging_path, verbose=False)
        if warmup:
            write_warmup_requests(staging_path, specs, batching=batching, moments=propagated is not None)
        os.rename(staging_path, final_path)
    finally:
        if os.path.exists(staging_path):
            shutil.rmtree(staging_path, ignore_errors=True)
    return final_path
