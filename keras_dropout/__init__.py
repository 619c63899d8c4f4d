"""keras-dropout: dropout and Monte Carlo dropout as first-class Keras 3 layers.

    import keras_dropout as kd

    model = keras.Sequential([..., kd.layers.MCDropout(0.1), ...])
    with kd.sampling(seed=0):          # every keras-dropout layer samples
        draws = [model.predict(x) for _ in range(10)]
    mc_model = kd.convert(stock_model)  # swap stock Keras dropout layers

`import keras_dropout` is cheap: the names below load on first use (PEP 562), so the CLI answers
`--help` without importing Keras or TensorFlow. When Keras is already imported, the layers and
losses are registered at once, so `keras.saving.load_model` finds them after a bare
`import keras_dropout`.
"""

import importlib
import sys

from keras_dropout._lazy import lazy_package

__version__ = "0.1.0"

lazy_package(
    __name__,
    {
        "layers": ("keras_dropout.layers", None),
        "losses": ("keras_dropout.losses", None),
        "masks": ("keras_dropout.masks", None),
        "metrics": ("keras_dropout.metrics", None),
        "uncertainty": ("keras_dropout.uncertainty", None),
        "serving": ("keras_dropout.serving", None),
        "convert": ("keras_dropout.convert", "convert"),
        "MCPrediction": ("keras_dropout.mc", "MCPrediction"),
        "predict_mc": ("keras_dropout.mc", "predict_mc"),
        "predict_moments": ("keras_dropout.moments", "predict_moments"),
        "sampling": ("keras_dropout.sampling", "sampling"),
        "StochasticSite": ("keras_dropout.sites", "StochasticSite"),
        "stochastic_sites": ("keras_dropout.sites", "stochastic_sites"),
    },
    functions_named_like_modules=("convert", "sampling"),
)

if sys.modules.get("keras") is not None:
    # Keras is loaded anyway: register the layers' and losses' classes for deserialization now.
    importlib.import_module("keras_dropout.layers")
    importlib.import_module("keras_dropout.losses")
