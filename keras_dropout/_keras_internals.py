"""Every private Keras and TensorFlow API keras-dropout relies on, and nothing else.

Keras 3 has no public way to walk a functional graph with a custom call per
layer, to list a layer's tracked sublayers, or to intercept the dropout that
Keras' own layers apply inside `call`. Those uses are gathered here and resolved
once at import, so that a Keras beyond the tested range (`TESTED_KERAS`, the
versions the test suite runs) that renamed one fails here with a message
naming it, not deep inside a user's `predict_mc` call.

What is used:
- `Layer._layers` (tracked sublayers) and `Layer._flatten_layers`;
- `Functional._standardize_inputs` / `Functional._run_through_graph` and
  `Sequential._functional`: the lazy tiling walk of `keras_dropout.vectorize`;
- `KerasTensor._keras_history` (which layer produced a model output);
- `keras.src.backend.common.symbolic_scope.in_symbolic_scope` (Keras' shape
  inference, during which `call` runs on symbolic tensors);
- `Functional._inputs_struct` / `_outputs_struct` (dict inputs and outputs
  keep their keys), `Model._build_shapes_dict` (the input shape of a called
  subclassed model, for its export), `BaseSpatialDropout._get_noise_shape`;
- TensorFlow (imported only when used): `control_flow_util.
  GraphOrParentsInXlaContext` (masks pick Philox outside XLA),
  `loader_impl.parse_saved_model` and `op_def_registry` (what `check` and
  the server read from a SavedModel without loading it), and
  `Session._make_callable_from_options` (the C++ `Session::MakeCallable`: the
  server runs signatures as TF Serving does, feeding tensors by name with no
  Python-side shape check);
- the methods through which Keras' layers apply dropout internally, which
  `install_call_hooks` wraps: `call` of the dropout-family layers,
  `RNN.call`, `DropoutRNNCell._create_dropout_mask`,
  `Attention._apply_scores` and `TimeDistributed.call`.
"""

import functools

import keras

# The Keras versions the test suite runs on (pyproject declares the same range).
TESTED_KERAS = ("3.8", "3.15")


class KerasInternalsError(RuntimeError):
    """A private Keras API keras-dropout relies on is missing or changed."""


def _fail(what):
    raise KerasInternalsError(
        f"keras-dropout needs {what}, which Keras {keras.__version__} does not "
        f"have. keras-dropout is tested with Keras {TESTED_KERAS[0]} to "
        f"{TESTED_KERAS[1]}; install a Keras in that range "
        f"(pip install 'keras>={TESTED_KERAS[0]},<{_next_minor(TESTED_KERAS[1])}')."
    )


def _next_minor(version):
    major, minor = version.split(".")[:2]
    return f"{major}.{int(minor) + 1}"


def _resolve():
    try:
        from keras.src.backend.common.symbolic_scope import in_symbolic_scope
        from keras.src.layers.rnn.conv_lstm import ConvLSTMCell
        from keras.src.layers.rnn.dropout_rnn_cell import DropoutRNNCell
        from keras.src.layers.rnn.rnn import RNN
        from keras.src.models.functional import Functional
    except ImportError as error:
        _fail(f"the module of {error.name or error}")
    for owner, attribute in (
        (Functional, "_run_through_graph"),
        (Functional, "_standardize_inputs"),
        (keras.layers.Layer, "_flatten_layers"),
        (DropoutRNNCell, "_create_dropout_mask"),
        (RNN, "call"),
        (keras.layers.Attention, "_apply_scores"),
        (keras.layers.TimeDistributed, "call"),
        (keras.layers.SpatialDropout1D, "_get_noise_shape"),
        (keras.Model, "_flatten_layers"),
    ):
        if not hasattr(owner, attribute):
            _fail(f"{owner.__name__}.{attribute}")
    return in_symbolic_scope, Functional, RNN, DropoutRNNCell, ConvLSTMCell


(
    in_symbolic_scope,
    Functional,
    RNN,
    DropoutRNNCell,
    ConvLSTMCell,
) = _resolve()


def sublayers(layer):
    """The layers `layer` tracks directly (attributes, lists, wrapped layers)."""
    return list(getattr(layer, "_layers", None) or [])


def flatten_layers(layer, include_self=False):
    """Every layer inside `layer`, nested ones included."""
    return list(layer._flatten_layers(include_self=include_self))


def functional_graph(layer):
    """The functional graph behind a Sequential or functional model, or None."""
    if isinstance(layer, keras.Sequential):
        graph = getattr(layer, "_functional", None)
        if graph is None and layer.built:
            _fail("Sequential._functional")
        return graph
    if isinstance(layer, Functional):
        return layer
    return None


def is_functional(layer):
    return isinstance(layer, keras.Sequential) or isinstance(layer, Functional)


def run_graph(graph, inputs, operation_fn):
    """Runs a functional graph, calling `operation_fn(layer)(*args, **kwargs)`."""
    inputs = graph._standardize_inputs(inputs)
    return graph._run_through_graph(inputs, operation_fn=operation_fn)


def keras_mask(tensor):
    """The Keras mask a tensor carries (`mask_zero`, `Masking`), or None."""
    try:
        from keras.src.backend.common.masking import get_keras_mask
    except ImportError:  # Keras before 3.9 sets the attribute on the tensor
        return getattr(tensor, "_keras_mask", None)
    return get_keras_mask(tensor)


def producer(tensor):
    """`(layer, output index)` of the layer that produced a KerasTensor."""
    history = getattr(tensor, "_keras_history", None)
    if history is None:
        _fail("KerasTensor._keras_history")
    return history.operation, history.tensor_index


def is_traced(tensor):
    """Whether `tensor` is symbolic (a graph being traced), not a concrete value."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return not tf.executing_eagerly()
    if backend == "jax":
        import jax

        return isinstance(tensor, jax.core.Tracer)
    return False


_installed = {}


def install_call_hooks(
    dropout_call, rnn_call, rnn_mask, attention_scores, time_distributed_call, dropout_classes
):
    """Routes Keras' internal dropout through keras-dropout (idempotent).

    Each hook is `make(original) -> replacement`; the replacement calls the
    original whenever keras-dropout has not asked for sampling, so outside
    `predict_mc`, MC signatures and `kd.sampling()` every layer behaves as
    Keras wrote it.
    """
    targets = [(cls, "call", dropout_call) for cls in dropout_classes]
    targets += [
        (RNN, "call", rnn_call),
        (DropoutRNNCell, "_create_dropout_mask", rnn_mask),
        (keras.layers.Attention, "_apply_scores", attention_scores),
        (keras.layers.TimeDistributed, "call", time_distributed_call),
    ]
    for owner, attribute, make in targets:
        if (owner, attribute) in _installed:
            continue
        original = getattr(owner, attribute)
        replacement = functools.wraps(original)(make(original))
        replacement.__keras_dropout_hook__ = True
        _installed[(owner, attribute)] = original
        setattr(owner, attribute, replacement)


def is_hooked(function):
    return getattr(function, "__keras_dropout_hook__", False)


def input_structure(model):
    """The structure a model was built with (a dict keeps its keys), or None."""
    return getattr(model, "_inputs_struct", None)


def called_input_shape(model):
    """The input shape a subclassed model was first called with, when it took
    one tensor (Keras records it in `_build_shapes_dict`); else None."""
    shapes = getattr(model, "_build_shapes_dict", None) or {}
    if len(shapes) != 1:
        return None
    shape = next(iter(shapes.values()))
    if not isinstance(shape, (tuple, list)) or not all(
        dim is None or isinstance(dim, int) for dim in shape
    ):
        return None
    return tuple(shape)


def output_structure(model):
    return getattr(model, "_outputs_struct", None)


def spatial_noise_shape(layer, inputs):
    """The channel-wise noise shape of one of Keras' SpatialDropout layers."""
    return layer._get_noise_shape(inputs)


def in_xla_context():
    """Whether TensorFlow is tracing a function for XLA (jit_compile=True)."""
    import tensorflow as tf
    from tensorflow.python.framework import ops as tf_ops
    from tensorflow.python.ops import control_flow_util

    return not tf.executing_eagerly() and control_flow_util.GraphOrParentsInXlaContext(
        tf_ops.get_default_graph()
    )


def omit_retracing_warning(function):
    """Silences TF's "triggered tf.function retracing" warning for `function`.

    TF counts traces per Python code object, across every `tf.function` built
    from it: `predict_mc` builds one per model, path and `num_samples` from one
    lambda, so using a few models in turn warned, with advice that does not
    apply (its row counts are already bucketed). Returns `function`.
    """
    if hasattr(function, "_omit_frequent_tracing_warning"):
        function._omit_frequent_tracing_warning = True
    return function


def parse_saved_model(path):
    """The SavedModel proto at `path`, read without loading the model."""
    from tensorflow.python.saved_model import loader_impl

    return loader_impl.parse_saved_model(path)


def is_registered_tf_op(name):
    """Whether `name` is an op of the TensorFlow build that is running."""
    from tensorflow.python.framework import op_def_registry

    return op_def_registry.get(name) is not None


def session_callable(session, feeds, fetches):
    """A callable running `session` on `feeds` (tensor names, positional arguments) to `fetches`.

    The public `Session.make_callable` routes feeds through `Session.run`, which refuses a
    value whose shape differs from the placeholder's; TF Serving's `Session::Run` does not.
    """
    from tensorflow.core.protobuf import config_pb2

    if not hasattr(session, "_make_callable_from_options"):
        import tensorflow as tf

        raise KerasInternalsError(
            "The embedded server needs tf.compat.v1.Session._make_callable_from_options, which "
            f"TensorFlow {tf.__version__} does not have; install a TensorFlow that has it."
        )
    return session._make_callable_from_options(
        config_pb2.CallableOptions(feed=list(feeds), fetch=list(fetches))
    )
