"""A user's code named in a config as ``<module>:<name>`` (an env, a learner, a policy family):
imported on request, with one error that names the config key and the fix."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


def import_named(path: str, key: str, error: type[Exception] = ValueError) -> tuple[ModuleType, str, Any]:
    """``(module, name, object or None)`` for ``path = "<module>:<name>"`` given as config ``key``;
    a malformed path or a module that does not import raises ``error`` saying so."""
    module_name, _, name = path.partition(":")
    if not module_name or not name or ":" in name:
        raise error(f"{key}={path}: write your own as <module>:<name>")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise error(f"{key}={path}: cannot import module {module_name!r} ({err}); install it or put its folder on "
                    "PYTHONPATH") from None
    return module, name, getattr(module, name, None)
