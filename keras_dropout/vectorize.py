"""The S-fold forward pass: S Monte Carlo samples of a batch in one call.

Rows are tiled S times (row-major: row 0 S times, then row 1, ...) and the
model runs once on the tiled batch inside `seed_scope`, so every sample gets
its own masks and no variable is written.

Prefix reuse: in Sequential and functional models (nested ones included)
the graph is walked node by node and a tensor is tiled only when it first
reaches a stochastic layer or meets an already tiled tensor. Everything
upstream of the first stochastic layer therefore runs once on the B rows,
not on B x S. Subclassed models have no graph to walk and are tiled whole.

A layer is stochastic when any site inside it samples
(`keras_dropout.sites`): keras-dropout layers, Keras' dropout layers
wherever they sit, attention and RNN dropout. The walk uses Keras'
functional graph internals, through `keras_dropout._keras_internals`.
"""

from keras import ops
from keras import tree

from keras_dropout import _keras_internals as internals
from keras_dropout.sampling import seed_scope
from keras_dropout.sites import has_sampled_site


def _tile(tensor, num_samples):
    return ops.repeat(tensor, num_samples, axis=0)


class _LazyTiler:
    """Runs a graph, tiling tensors only where they meet stochastic layers."""

    def __init__(self, num_samples):
        self.num_samples = num_samples
        # id -> tensor; the tensor is kept alive so its id stays unique.
        self.tiled = {}
        self.stochastic = {}

    def is_stochastic(self, layer):
        if id(layer) not in self.stochastic:
            self.stochastic[id(layer)] = has_sampled_site(layer)
        return self.stochastic[id(layer)]

    def is_tiled(self, tensor):
        return id(tensor) in self.tiled

    def mark(self, outputs):
        for tensor in tree.flatten(outputs):
            self.tiled[id(tensor)] = tensor
        return outputs

    def tile_all(self, structure):
        def tile_one(value):
            if not _is_tensor(value) or self.is_tiled(value):
                return value
            return self.mark(_tile(value, self.num_samples))

        return tree.map_structure(tile_one, structure)

    def run_graph(self, graph, inputs):
        return internals.run_graph(graph, inputs, self.wrap)

    def wrap(self, operation):
        def run(*args, **kwargs):
            tensors = [t for t in tree.flatten((args, kwargs)) if _is_tensor(t)]
            any_tiled = any(self.is_tiled(t) for t in tensors)
            stochastic = hasattr(operation, "_layers") and self.is_stochastic(operation)
            graph = internals.functional_graph(operation) if stochastic else None
            if graph is not None:
                # Walk into the nested model: its own prefix runs untiled too.
                return self.run_graph(graph, args[0] if len(args) == 1 else args)
            if not (stochastic or any_tiled):
                return operation(*args, **kwargs)
            args, kwargs = self.tile_all((args, kwargs))
            return self.mark(operation(*args, **kwargs))

        return run


def _is_tensor(value):
    return hasattr(value, "shape") and hasattr(value, "dtype")


def sample_outputs(model, inputs, seed, num_samples, row_ids=None, sample_ids=None):
    """Runs `num_samples` sampled forward passes of `model` on `inputs`.

    Args:
        model: a Keras model with at least one sampled site.
        inputs: the model's inputs for B rows (tensor, list or dict).
        seed: a `uint32` seed tensor of shape `(2,)`.
        num_samples: S, a Python int (or a scalar tensor in signatures).
        row_ids, sample_ids: optional ids of the rows, `(B, 2)` uint32 (low
            and high words), and global indices of the samples `(S,)`; with
            them every row's masks depend on (seed, row id, sample) only, not
            on the chunk it is computed in.

    Returns:
        The model's outputs (same structure), each shaped `(B, S, ...)`.
    """
    tiler = _LazyTiler(num_samples)
    with seed_scope(seed, num_samples=num_samples, row_ids=row_ids, sample_ids=sample_ids):
        graph = internals.functional_graph(model)
        if graph is None:
            # A subclassed model: no graph to walk, so every row is tiled.
            outputs = tiler.mark(model(tiler.tile_all(inputs)))
        else:
            outputs = tiler.run_graph(graph, inputs)
        outputs = tiler.tile_all(outputs)  # an output no noise reaches

    def unfold(tensor):
        shape = ops.shape(tensor)
        return ops.reshape(tensor, (-1, num_samples) + tuple(shape[1:]))

    return tree.map_structure(unfold, outputs)
