"""One error root: every exception class in services/ derives from CiliaError.

(The import contracts are checked by ``make lint``: import-linter, with its contracts in
pyproject.toml.)
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import services
from services.common.errors import CiliaError


def _modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(services.__path__, "services."))


def test_every_error_derives_from_cilia_error() -> None:
    strays = []
    for name in _modules():
        module = importlib.import_module(name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if (cls.__module__ == name and issubclass(cls, BaseException)
                    and not issubclass(cls, CiliaError)):
                strays.append(f"{name}.{cls.__qualname__}")
    assert strays == []
