"""The keras-dropout layers: the dropout family, each able to sample at inference."""

from keras_dropout.layers.alpha_dropout import MCAlphaDropout
from keras_dropout.layers.concrete_dropout import ConcreteDropout
from keras_dropout.layers.dropconnect_dense import DropConnectDense
from keras_dropout.layers.dropout import MCDropout
from keras_dropout.layers.gaussian_dropout import MCGaussianDropout
from keras_dropout.layers.gaussian_head import GaussianHead
from keras_dropout.layers.gaussian_noise import MCGaussianNoise
from keras_dropout.layers.sampling_layer import SamplingLayer
from keras_dropout.layers.spatial_dropout import MCSpatialDropout1D
from keras_dropout.layers.spatial_dropout import MCSpatialDropout2D
from keras_dropout.layers.spatial_dropout import MCSpatialDropout3D

__all__ = [
    "ConcreteDropout",
    "DropConnectDense",
    "GaussianHead",
    "MCAlphaDropout",
    "MCDropout",
    "MCGaussianDropout",
    "MCGaussianNoise",
    "MCSpatialDropout1D",
    "MCSpatialDropout2D",
    "MCSpatialDropout3D",
    "SamplingLayer",
]
