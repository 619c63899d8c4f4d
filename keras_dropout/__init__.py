"""keras-dropout: dropout and Monte Carlo dropout as first-class Keras 3 layers.

    import keras_dropout as kd

    model = keras.Sequential([..., kd.layers.MCDropout(0.1), ...])
    with kd.sampling(seed=0):          # every keras-dropout layer samples
        draws = [model.predict(x) for _ in range(10)]
    mc_model = kd.convert(stock_model)  # swap stock Keras dropout layers
"""

from keras_dropout import layers
from keras_dropout import masks
from keras_dropout import metrics
from keras_dropout import uncertainty
from keras_dropout.convert import convert
from keras_dropout.mc import MCPrediction
from keras_dropout.mc import predict_mc
from keras_dropout.sampling import sampling
from keras_dropout.sites import StochasticSite
from keras_dropout.sites import stochastic_sites

__version__ = "0.1.0"


def __getattr__(name):
    # `kd.serving` imports TensorFlow Serving's protos: only on first use.
    if name == "serving":
        import importlib

        return importlib.import_module("keras_dropout.serving")
    raise AttributeError(f"module 'keras_dropout' has no attribute {name!r}")


__all__ = [
    "MCPrediction",
    "StochasticSite",
    "convert",
    "layers",
    "masks",
    "metrics",
    "predict_mc",
    "sampling",
    "serving",
    "stochastic_sites",
    "uncertainty",
]
