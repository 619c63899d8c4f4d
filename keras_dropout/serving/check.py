"""`check`: what a real TensorFlow Serving would trip on in a SavedModel."""

import os

from keras_dropout import _keras_internals
from keras_dropout.serving.warmup import WARMUP_FILE

_PY_FUNC_OPS = {"PyFunc", "PyFuncStateless", "EagerPyFunc"}
_VARIABLE_WRITE_PREFIXES = (
    "Assign",
    "ResourceScatter",
    "ResourceApply",
    "ResourceSparseApply",
    "ScatterUpdate",
    "ScatterAdd",
    "ScatterSub",
    "ResourceStridedSliceAssign",
)
_INTERNAL_SIGNATURES = ("__saved_model_init_op",)


def _called_functions(node):
    for value in node.attr.values():
        if value.HasField("func"):
            yield value.func.name
        for function in value.list.func:
            yield function.name


def _reachable_ops(meta_graph, signature):
    """(op name, node name, function name or None) reachable from a signature."""
    nodes = {node.name: node for node in meta_graph.graph_def.node}
    library = {function.signature.name: function for function in meta_graph.graph_def.library.function}
    pending = [info.name.split(":")[0] for info in signature.outputs.values()]
    seen_nodes, seen_functions, found = set(), set(), []

    def visit_function(name):
        if name in seen_functions or name not in library:
            return
        seen_functions.add(name)
        function = library[name]
        if function.attr["_XlaMustCompile"].b:
            found.append(("<XLA>", name, name))
        for node in function.node_def:
            found.append((node.op, node.name, name))
            if node.attr["_XlaMustCompile"].b:
                found.append(("<XLA>", node.name, name))
            visit_function(node.op)
            for called in _called_functions(node):
                visit_function(called)

    while pending:
        name = pending.pop().lstrip("^")
        if name in seen_nodes or name not in nodes:
            continue
        seen_nodes.add(name)
        node = nodes[name]
        found.append((node.op, node.name, None))
        if node.attr["_XlaMustCompile"].b:
            found.append(("<XLA>", node.name, None))
        visit_function(node.op)
        for called in _called_functions(node):
            visit_function(called)
        pending.extend(input_name.split(":")[0] for input_name in node.input)
    return found, library


def _graph_problems(meta_graph):
    problems = []
    for signature_name, signature in meta_graph.signature_def.items():
        if signature_name in _INTERNAL_SIGNATURES:
            continue
        found, library = _reachable_ops(meta_graph, signature)
        for op, node_name, function in found:
            where = f"signature '{signature_name}', node '{node_name}'" + (
                f" in function '{function}'" if function else ""
            )
            if op == "<XLA>":
                problems.append(
                    f"{where}: XLA-compiled function (jit_compile=True); TF Serving "
                    "refuses it on CPU unless --xla_cpu_compilation_enabled"
                )
            elif op in _PY_FUNC_OPS:
                problems.append(f"{where}: op {op} runs Python, which TF Serving does not have")
            elif op.startswith(_VARIABLE_WRITE_PREFIXES):
                problems.append(
                    f"{where}: op {op} writes a variable (races between concurrent "
                    "requests, lost on reload)"
                )
            elif op not in library and not _keras_internals.is_registered_tf_op(op):
                problems.append(f"{where}: op {op} is not a core TensorFlow op")
    return problems


def _batching_problems(meta_graph):
    problems = []
    for signature_name, signature in meta_graph.signature_def.items():
        if signature_name in _INTERNAL_SIGNATURES:
            continue
        for input_name, info in signature.inputs.items():
            shape = info.tensor_shape
            if shape.unknown_rank:
                continue
            if not shape.dim:
                problems.append(
                    f"signature '{signature_name}', input '{input_name}': a scalar "
                    "cannot be batched; TF Serving with --enable_batching fails to load it"
                )
            elif shape.dim[0].size != -1:
                problems.append(
                    f"signature '{signature_name}', input '{input_name}': dimension 0 "
                    f"is fixed to {shape.dim[0].size}, so requests cannot share a batch dimension"
                )
    return problems


def _warmup_problems(path):
    if not os.path.exists(os.path.join(path, WARMUP_FILE)):
        return [f"missing warmup file {WARMUP_FILE}: the first requests will pay for initialisation"]
    # The server's own load and replay (they need the `serving` extra).
    from keras_dropout.serving.errors import ServingError
    from keras_dropout.serving.servables import load_servable
    from keras_dropout.serving.warmup import replay_warmup

    try:
        servable = load_servable("check", 1, path, warmup=False)
    except ServingError as error:
        return [f"the SavedModel does not load, so TF Serving cannot load it either: {error}"]
    try:
        replay_warmup(servable)
    except ServingError as error:
        return [f"the warmup replay fails, which fails the whole load in TF Serving: {error}"]
    return []


def check(path, batching=False):
    """Lists what a real TensorFlow Serving would trip on in a SavedModel.

    Looks at everything reachable from each serving signature: ops outside
    core TensorFlow (PyFunc included), variable writes, XLA-compiled
    functions; then the warmup file (missing, unparsable, over 1000 records,
    or a record that fails when replayed); with `batching=True`, inputs
    without a shared, unknown batch dimension (scalars included).

    Args:
        path: a SavedModel directory (one version, e.g. `base/3`).
        batching: also check for `--enable_batching`.

    Returns:
        A list of human-readable problems; empty means servable.

    Example:

    ```python
    problems = kd.serving.check("/models/my_model/1")
    assert not problems, problems
    ```
    """
    path = os.fspath(path)
    try:
        saved_model = _keras_internals.parse_saved_model(path)
    except OSError as error:
        return [f"no SavedModel at {path}: {error}"]
    problems = []
    for meta_graph in saved_model.meta_graphs:
        problems.extend(_graph_problems(meta_graph))
        if batching:
            problems.extend(_batching_problems(meta_graph))
    problems.extend(_warmup_problems(path))
    return problems
