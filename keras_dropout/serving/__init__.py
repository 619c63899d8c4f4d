"""Serving: SavedModels with MC signatures, their checker, a TF Serving client and server.

TensorFlow backend only. The names load on first use (PEP 562): `keras-dropout serve --help`
reads the server's flags without importing TensorFlow.
"""

import importlib
import sys
import types

_LAZY = {
    "Client": "keras_dropout.serving.client",
    "Server": "keras_dropout.serving.server",
    "ServingError": "keras_dropout.serving.errors",
}


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'keras_dropout.serving' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY) | {"check", "export"})


class _Package(types.ModuleType):
    """`kd.serving.check` and `kd.serving.export` are functions named like their modules.

    Importing a submodule binds it on its package, which would replace the function; these
    properties keep the functions (the modules stay in `sys.modules`).
    """

    @property
    def check(self):
        return importlib.import_module("keras_dropout.serving.check").check

    @check.setter
    def check(self, module):
        pass  # the submodule keras_dropout.serving.check being imported

    @property
    def export(self):
        return importlib.import_module("keras_dropout.serving.export").export

    @export.setter
    def export(self, module):
        pass  # the submodule keras_dropout.serving.export being imported


sys.modules[__name__].__class__ = _Package

__all__ = sorted(set(_LAZY) | {"check", "export"})
