"""Packages whose public names are imported on first use (PEP 562)."""

import importlib
import sys


def attach(package: str, exports: dict[str, str]):
    """`__getattr__` and `__dir__` for `package`, whose names live in the modules `exports`
    maps them to; each is imported when first asked for, then kept."""
    namespace = vars(sys.modules[package])

    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name]), name)
        namespace[name] = value
        return value

    def __dir__():
        return sorted([*namespace, *exports])

    return __getattr__, __dir__
