"""Agents by config name: ``agent.name`` in ``configs/agent/*.yaml`` -> (config dataclass, class)."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import torch

from rlft.agents.base import Learner
from rlft.agents.sac import SAC, SACConfig
from rlft.agents.td3 import TD3, TD3Config
from rlft.agents.tdmpc2 import TDMPC2, TDMPC2Config
from rlft.agents.cql import CQL, CQLConfig
from rlft.agents.fql import FQL, FQLConfig
from rlft.agents.iql import IQL, IQLConfig
from rlft.agents.spot import SPOT, SPOTConfig
from rlft.common.suggest import did_you_mean
from rlft.common.user_code import import_named
from rlft.common.typed_config import ConfigError, config_from_mapping

# Cal-QL, E2O and WSRL are configurations of CQL (configs/agent/{calql,e2o,wsrl}.yaml).
AGENTS: dict[str, tuple[type, type]] = {
    "td3": (TD3Config, TD3),
    "spot": (SPOTConfig, SPOT),
    "sac": (SACConfig, SAC),
    "cql": (CQLConfig, CQL),
    "iql": (IQLConfig, IQL),
    "tdmpc2": (TDMPC2Config, TDMPC2),  # FOWM is a configuration of it (configs/agent/fowm.yaml)
    "fql": (FQLConfig, FQL),
}


def resolve_agent(name: str) -> tuple[type, type]:
    """(config dataclass, learner class) of agent ``name``: one of :data:`AGENTS`, or a user's
    learner as ``<module>:<Class>`` (``agent=custom agent.name=mypkg.agents:MyAgent``), a
    :class:`~rlft.agents.base.Learner` subclass whose ``Config`` attribute is its config dataclass
    (docs/extending.md)."""
    if name in AGENTS:
        return AGENTS[name]
    if ":" not in name:
        raise ConfigError(f"agent.name={name!r}: unknown agent{did_you_mean(name, AGENTS)}; available: "
                          f"{sorted(AGENTS)}, or your own as <module>:<Class>")
    _, attr, cls = import_named(name, "agent.name", ConfigError)
    if not (isinstance(cls, type) and issubclass(cls, Learner)):
        raise ConfigError(f"agent.name={name}: {attr!r} in {name.partition(':')[0]} is not a rlft Learner subclass")
    config = getattr(cls, "Config", None)
    if not (isinstance(config, type) and dataclasses.is_dataclass(config)):
        raise ConfigError(f"agent.name={name}: {cls.__name__}.Config must be its config dataclass")
    return config, cls


def agent_config(name: str, options: Mapping[str, Any]) -> Any:
    """The typed, checked config of agent ``name`` from ``options`` (the agent config minus ``name``)."""
    return config_from_mapping(resolve_agent(name)[0], options, "agent")


def build_agent(
    name: str, options: Mapping[str, Any], obs_dim: int, action_dim: int, device: str | torch.device = "cpu"
) -> Learner:
    """Instantiate agent ``name`` with ``options`` (the agent config minus ``name``)."""
    return make_agent(name, agent_config(name, options), obs_dim, action_dim, device)


def make_agent(name: str, config: Any, obs_dim: int, action_dim: int, device: str | torch.device = "cpu") -> Learner:
    """Instantiate agent ``name`` from its already checked config (:func:`agent_config`)."""
    return resolve_agent(name)[1](obs_dim, action_dim, config, device)
