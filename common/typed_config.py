"""Typed, range-checked configs: every config dataclass (agents, trainer/loop budgets, PPO, SFT,
generation, ...) is built from its YAML mapping by :func:`config_from_mapping`, which checks each
value against the field's type hint and against the ranges below, and names the key, the value
and what is allowed when one is wrong. A run therefore stops at its start with one line instead
of a ``TypeError`` or ``ZeroDivisionError`` deep inside a loop, or a run that silently does nothing.

Ranges go by field name, the same in every config (a name says what a number counts):

=====================================================  =========================
``*_every``, ``keep_checkpoints``, ``*batch_size``,     an integer >= 1
``minibatch_*``, ``num_envs``, ``eval_envs``,
``eval_episodes``, ``*epochs``, ``waves``, ``utd``,
``group_size``, ``max_new_tokens``, ``threads``
``hidden``, ``*_hidden`` (each layer's width)            integers >= 1
``*steps``, ``iterations``, ``episodes``                an integer >= 0 (a budget)
``*lr``                                                 a number > 0
``gamma``, ``discount``, ``gae_lambda``, ``tau``,       a number in [0, 1]
``expectile``, ``top_fraction``, ``epsilon``
=====================================================  =========================

Whether a run's budgets add up to any training at all is the runner's check
(:meth:`rlft.runtime.runner.Runner.check_budget`).
"""

from __future__ import annotations

import collections.abc
import dataclasses
import math
import types
import typing
from fnmatch import fnmatchcase
from typing import Any, Callable, Literal, Mapping

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf


class ConfigError(ValueError):
    """A config value has the wrong type or is out of range; the message names key, value and rule."""


_RANGES: tuple[tuple[tuple[str, ...], Callable[[float], bool], str], ...] = (
    (("*_every", "keep_checkpoints", "*batch_size", "minibatch_*", "num_envs", "eval_envs", "eval_episodes",
      "*epochs", "waves", "utd", "group_size", "max_new_tokens"), lambda v: v >= 1, ">= 1"),
    (("threads",), lambda v: v >= 1, ">= 1 (threads=null leaves torch's own default, which slows a run many times "
                                      "over as soon as another process shares the CPU)"),
    (("hidden", "*_hidden"), lambda v: v >= 1, "widths >= 1 (one per hidden layer)"),
    (("*steps", "iterations", "episodes"), lambda v: v >= 0, ">= 0"),
    (("*lr",), lambda v: v > 0, "> 0"),
    (("gamma", "discount", "gae_lambda", "tau", "expectile", "top_fraction", "epsilon"),
     lambda v: 0 <= v <= 1, "in [0, 1]"),
)


def _range_rule(name: str) -> tuple[Callable[[float], bool], str] | None:
    for patterns, ok, text in _RANGES:
        if any(fnmatchcase(name, p) for p in patterns):
            return ok, text
    return None


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is int:
        return "an integer"
    if hint is float:
        return "a number"
    if hint is bool:
        return "true or false"
    if hint is str:
        return "a string"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a) for a in args)
    if origin is collections.abc.Sequence and args:  # described as the tuple it is read as
        return _describe(tuple[args[0], ...])
    if origin is tuple:
        return f"a list of {_describe(args[0])}s" if args else "a list"
    if origin is dict:
        return f"a mapping of {_describe(args[1])}s" if len(args) == 2 else "a mapping"
    return getattr(hint, "__name__", str(hint))


_WRONG = object()


def _coerce(value: Any, hint: Any) -> Any:
    """``value`` as the type ``hint`` names (an integral float is an int: YAML reads ``1e6`` as a
    float), or ``_WRONG``. Hints this does not know (``Any``, classes) accept every value."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        return value if isinstance(value, bool) else _WRONG
    if hint is int:
        if isinstance(value, bool):
            return _WRONG
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value if isinstance(value, int) else _WRONG
    if hint is float:
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else _WRONG
    if hint is str:
        return value if isinstance(value, str) else _WRONG
    if origin is Literal:
        return value if value in args else _WRONG
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None if type(None) in args else _WRONG
        for option in args:
            if option is not type(None) and (converted := _coerce(value, option)) is not _WRONG:
                return converted
        return _WRONG
    if origin is collections.abc.Sequence and args:  # a list of one type, e.g. hidden: Sequence[int]
        return _coerce(value, tuple[args[0], ...])
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return _WRONG
        if len(args) == 2 and args[1] is Ellipsis:
            element_hints = [args[0]] * len(value)
        elif args:
            if len(args) != len(value):
                return _WRONG
            element_hints = list(args)
        else:
            element_hints = [Any] * len(value)
        items = [_coerce(v, h) for v, h in zip(value, element_hints)]
        return _WRONG if any(i is _WRONG for i in items) else tuple(items)
    if origin is dict:
        if not isinstance(value, Mapping):
            return _WRONG
        if len(args) == 2:
            items = {k: _coerce(v, args[1]) for k, v in value.items()}
            return _WRONG if any(i is _WRONG for i in items.values()) else items
        return dict(value)
    return value


def check_value(key: str, value: Any, hint: Any) -> Any:
    """``value`` of config key ``key`` converted to ``hint`` and range-checked, or :class:`ConfigError`."""
    converted = _coerce(value, hint)
    if converted is _WRONG:
        raise ConfigError(f"{key}={value!r}: expected {_describe(hint)}")
    rule = _range_rule(key.rsplit(".", 1)[-1])
    values = (converted.values() if isinstance(converted, dict) else converted if isinstance(converted, tuple)
              else [converted])
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if rule is not None:
        ok, text = rule
        for number in numbers:
            if not (math.isfinite(number) and ok(number)):
                raise ConfigError(f"{key}={value!r}: must be {text}")
    return converted


def config_from_mapping(cls: type, values: Mapping[str, Any], what: str) -> Any:
    """Build dataclass ``cls`` from a mapping found under config key ``what``, checking every
    value's type and range; unknown keys are an error naming the known ones. Fields that are
    dataclasses themselves are built from nested mappings the same way."""
    values = {key: OmegaConf.to_container(v, resolve=True) if isinstance(v, (DictConfig, ListConfig)) else v
              for key, v in values.items()}  # resolves ${...} in place (against the node's root)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"unknown {what} option(s) {unknown}; known: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
            kwargs[key] = config_from_mapping(hint, value, f"{what}.{key}")
        else:
            kwargs[key] = check_value(f"{what}.{key}", value, hint)
    return cls(**kwargs)


def resolve_device(name: str | None) -> torch.device:
    """``device=`` as a torch device, refusing in words one this machine does not have."""
    try:
        device = torch.device(name or "cpu")
    except (RuntimeError, TypeError):
        raise ConfigError(f"device={name!r}: not a torch device (cpu, cuda, cuda:1, mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        build = f"a CUDA {torch.version.cuda} build" if torch.version.cuda else "a CPU-only build"
        raise ConfigError(f"device={name!r}: no CUDA GPU is usable here (torch {torch.__version__} is {build}); "
                          "use device=cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device={name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device={name!r}: MPS is not available here; use device=cpu")
    return device
