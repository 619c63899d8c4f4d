"""keras-dropout: dropout and Monte Carlo dropout as first-class Keras 3 layers.

    import keras_dropout as kd

    model = keras.Sequential([..., kd.layers.MCDropout(0.1), ...])
    with kd.sampling(seed=0):          # every keras-dropout layer samples
        draws = [model.predict(x) for _ in range(10)]
    mc_model = kd.convert(stock_model)  # swap stock Keras dropout layers

`import keras_dropout` is cheap: the names below load on first use (PEP 562), so the CLI answers
`--help` without importing Keras or TensorFlow. When Keras is already imported, the layers are
registered at once, so `keras.saving.load_model` finds them after a bare `import keras_dropout`.
"""

import importlib
import sys
import types

__version__ = "0.1.0"

# Public name -> (module, attribute or None for the module itself).
_LAZY = {
    "layers": ("keras_dropout.layers", None),
    "masks": ("keras_dropout.masks", None),
    "metrics": ("keras_dropout.metrics", None),
    "uncertainty": ("keras_dropout.uncertainty", None),
    "serving": ("keras_dropout.serving", None),
    "MCPrediction": ("keras_dropout.mc", "MCPrediction"),
    "predict_mc": ("keras_dropout.mc", "predict_mc"),
    "StochasticSite": ("keras_dropout.sites", "StochasticSite"),
    "stochastic_sites": ("keras_dropout.sites", "stochastic_sites"),
}


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'keras_dropout' has no attribute {name!r}")
    module_name, attribute = _LAZY[name]
    module = importlib.import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY) | {"convert", "sampling"})


class _Package(types.ModuleType):
    """`kd.sampling` and `kd.convert` are functions named like their modules.

    Importing a submodule binds it on its package, which would replace the function; these
    properties keep the functions (the modules stay in `sys.modules`).
    """

    @property
    def sampling(self):
        from keras_dropout.sampling import sampling

        return sampling

    @sampling.setter
    def sampling(self, module):
        pass  # the submodule keras_dropout.sampling being imported

    @property
    def convert(self):
        from keras_dropout.convert import convert

        return convert

    @convert.setter
    def convert(self, module):
        pass  # the submodule keras_dropout.convert being imported


sys.modules[__name__].__class__ = _Package


if sys.modules.get("keras") is not None:
    # Keras is loaded anyway: register the layers' classes for deserialization now.
    importlib.import_module("keras_dropout.layers")

__all__ = sorted(set(_LAZY) | {"convert", "sampling"})
