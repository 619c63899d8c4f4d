"""Serving: SavedModels with MC signatures, their checker, a TF Serving client and server.

TensorFlow backend only. The names load on first use (PEP 562): `keras-dropout serve --help`
reads the server's flags without importing TensorFlow.
"""

from keras_dropout._lazy import lazy_package

lazy_package(
    __name__,
    {
        "Client": ("keras_dropout.serving.client", "Client"),
        "Server": ("keras_dropout.serving.server", "Server"),
        "ServingError": ("keras_dropout.serving.errors", "ServingError"),
        "check": ("keras_dropout.serving.check", "check"),
        "export": ("keras_dropout.serving.export", "export"),
    },
    functions_named_like_modules=("check", "export"),
)
