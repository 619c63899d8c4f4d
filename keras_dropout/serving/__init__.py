"""Serving: SavedModels with MC signatures, their checker, a TF Serving client and server.

TensorFlow backend only. The names load on first use (PEP 562): `keras-dropout serve --help`
reads the server's flags without importing TensorFlow.
"""

import importlib

_LAZY = {
    "Client": "keras_dropout.serving.client",
    "Server": "keras_dropout.serving.server",
    "ServingError": "keras_dropout.serving.errors",
    "check": "keras_dropout.serving.check",
    "export": "keras_dropout.serving.export",
}


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'keras_dropout.serving' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = sorted(_LAZY)
