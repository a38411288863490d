"""Agents by config name: ``agent.name`` in ``configs/agent/*.yaml`` -> (config dataclass, class)."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Mapping

import torch

from rlft.agents.base import Learner
from rlft.agents.sac import SAC, SACConfig
from rlft.agents.td3 import TD3, TD3Config
from rlft.agents.tdmpc2 import TDMPC2, TDMPC2Config
from rlft.offline.cql import CQL, CQLConfig
from rlft.offline.iql import IQL, IQLConfig
from rlft.offline.spot import SPOT, SPOTConfig

# Cal-QL, E2O and WSRL are configurations of CQL (configs/agent/{calql,e2o,wsrl}.yaml).
AGENTS: dict[str, tuple[type, type]] = {
    "td3": (TD3Config, TD3),
    "spot": (SPOTConfig, SPOT),
    "sac": (SACConfig, SAC),
    "cql": (CQLConfig, CQL),
    "iql": (IQLConfig, IQL),
    "tdmpc2": (TDMPC2Config, TDMPC2),  # FOWM is a configuration of it (configs/agent/fowm.yaml)
}


def config_from_mapping(cls: type, values: Mapping[str, Any], what: str) -> Any:
    """Build dataclass ``cls`` from a mapping; unknown keys are an error naming the known ones.
    Fields that are dataclasses themselves are built from nested mappings the same way."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"unknown {what} option(s) {unknown}; known: {sorted(fields)}")
    types = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        if dataclasses.is_dataclass(types[key]) and isinstance(value, Mapping):
            value = config_from_mapping(types[key], value, f"{what} {key}")
        elif isinstance(value, list):
            value = tuple(value)
        elif key == "online_overrides" and isinstance(value, Mapping):
            value = {k: tuple(v) if isinstance(v, list) else v for k, v in value.items()}
        kwargs[key] = value
    return cls(**kwargs)


def build_agent(
    name: str, options: Mapping[str, Any], obs_dim: int, action_dim: int, device: str | torch.device = "cpu"
) -> Learner:
    """Instantiate agent ``name`` with ``options`` (the agent config minus ``name``)."""
    if name not in AGENTS:
        raise ValueError(f"unknown agent {name!r}; available: {sorted(AGENTS)}")
    config_cls, agent_cls = AGENTS[name]
    return agent_cls(obs_dim, action_dim, config_from_mapping(config_cls, options, f"agent '{name}'"), device)
