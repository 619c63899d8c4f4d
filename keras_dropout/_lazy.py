"""Lazy package attributes (PEP 562): `import keras_dropout` loads no framework.

`lazy_package(__name__, attributes, functions_named_like_modules)` gives a package attributes
that import their module on first use. A function named like its own module (`kd.sampling`,
`kd.serving.export`) needs more: importing a submodule binds it on its package, which would
replace the function, so those names become properties of the package's class that always
return the function (the modules stay in `sys.modules`).
"""

import importlib
import sys
import types


def lazy_package(package_name, attributes, functions_named_like_modules=()):
    """Makes the names of `attributes` load on first use in the package `package_name`.

    Args:
        package_name: the package's `__name__`.
        attributes: public name -> (module name, attribute name, or None for the module).
        functions_named_like_modules: names in `attributes` whose module has the same name.
    """
    package = sys.modules[package_name]

    def resolve(name):
        module_name, attribute = attributes[name]
        module = importlib.import_module(module_name)
        return module if attribute is None else getattr(module, attribute)

    def __getattr__(name):
        if name not in attributes:
            raise AttributeError(f"module {package_name!r} has no attribute {name!r}")
        value = resolve(name)
        setattr(package, name, value)
        return value

    def __dir__():
        return sorted(set(vars(package)) | set(attributes))

    def function_property(name):
        # The setter ignores the submodule the import system binds under the same name.
        return property(lambda _: resolve(name), lambda _, module: None)

    package.__getattr__ = __getattr__
    package.__dir__ = __dir__
    package.__all__ = sorted(attributes)
    package.__class__ = type(
        "LazyPackage",
        (types.ModuleType,),
        {name: function_property(name) for name in functions_named_like_modules},
    )
