"""The off-policy actor-critic skeleton every replay-buffer learner shares.

One :meth:`OffPolicyAgent.update` is one critic step and, every ``policy_freq`` critic
steps, one actor step, followed by target-network updates. Learners differ only in the
pieces: :meth:`critic_loss`, :meth:`actor_loss`, :meth:`update_targets` and
:meth:`after_actor_step`. The experiment runner (:mod:`rlft.runtime.experiment`) needs
nothing else: ``act``, ``update``, ``pretrain_phases``, ``start_online``, ``state_dict``.

``online_overrides`` in the config switches hyperparameters when fine-tuning starts, so
an offline-to-online recipe is a config, not a class (E2O drops CQL's penalty and changes
its target; WSRL turns Cal-QL into SAC): ``online_overrides: {cql_alpha: 0.0}``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from rlft.agents.replay_buffer import Batch

Metrics = dict[str, "float | torch.Tensor"]
"""What an update returns: scalars, often 0-dim tensors on the learner's device. Runners turn them into
floats only when they log (``rlft.runtime.logger.MeanAccumulator``), so an update never waits on the device."""
UpdateFn = Callable[[Batch], Metrics]
LossFn = Callable[[Batch], "tuple[torch.Tensor, Metrics]"]


@dataclass
class OnlineOverridable:
    """A learner config whose ``online_overrides`` switch some of its fields when fine-tuning starts."""

    online_overrides: dict[str, Any] = field(default_factory=dict)  # config changes applied by start_online

    def __post_init__(self) -> None:
        known = {f.name for f in dataclasses.fields(self)} - {"online_overrides"}
        unknown = sorted(set(self.online_overrides) - known)
        if unknown:
            raise ValueError(f"online_overrides has unknown option(s) {unknown}; known: {sorted(known)}")


@dataclass
class AgentConfig(OnlineOverridable):
    """Hyperparameters every off-policy learner has."""

    discount: float = 0.99  # gamma
    tau: float = 0.005  # Polyak rate of the target networks
    policy_freq: int = 1  # one actor step every policy_freq critic steps
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    hidden: tuple[int, ...] = (256, 256)  # actor and critic hidden widths
    num_critics: int = 2
    compile: bool = False  # torch.compile the critic and actor losses: for GPUs; slower or level on CPU (benchmarks/compile.md)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.policy_freq < 1:
            raise ValueError(f"policy_freq must be >= 1, got {self.policy_freq}")


class Learner:
    """What every learner of the offline-to-online runner shares: ``cfg`` is ``base_cfg`` until
    :meth:`start_online` applies its ``online_overrides``; ``num_updates`` counts updates; the
    checkpoint holds every object :meth:`_modules` lists. Subclasses add ``act`` and ``update``."""

    sequence_length: int = 1  # > 1: update() takes time-major sequence batches (ReplayBuffer.sample_sequences)
    chunk_length: int = 1  # > 1: update() takes action chunks (ReplayBuffer.sample_chunks)
    acts_with_state: bool = False  # act() keeps per-env state across steps (a planner's warm start, a chunk)
    needs_finished_episodes: bool = False  # online batches only from finished episodes (MC returns known)

    def __init__(self, cfg: OnlineOverridable):
        self.base_cfg = cfg
        self.cfg = cfg
        self.num_updates = 0
        self.online = False

    @property
    def pretrain_phases(self) -> list[tuple[str, UpdateFn]]:
        """Phases run on the dataset before :meth:`update`: (name, update function). Their
        budgets come from the run config (``trainer.pretrain_steps.<name>``)."""
        return []

    def start_online(self) -> None:
        """Called once when online fine-tuning begins: applies ``online_overrides``."""
        self.online = True
        self.cfg = dataclasses.replace(self.base_cfg, **self.base_cfg.online_overrides)

    def _modules(self) -> dict[str, Any]:
        """Every object with ``state_dict``/``load_state_dict`` that a checkpoint must hold."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        state = {name: m.state_dict() for name, m in self._modules().items()}
        state.update(num_updates=self.num_updates, online=self.online)
        return state

    def acting_state(self) -> dict[str, Any]:
        """What a copy of this learner needs to act as it does (Ray collection workers,
        :mod:`rlft.runtime.transition_workers`): its networks' weights on CPU, its update count and
        whether fine-tuning has begun (online overrides may change how it explores)."""
        modules = {name: {k: v.detach().cpu() for k, v in m.state_dict().items()}
                   for name, m in self._modules().items() if isinstance(m, torch.nn.Module)}
        return {"modules": modules, "num_updates": self.num_updates, "online": self.online}

    def load_acting_state(self, state: dict[str, Any]) -> None:
        """Act as the learner that wrote ``state`` with :meth:`acting_state` does."""
        modules = self._modules()
        for name, weights in state["modules"].items():
            modules[name].load_state_dict(weights)
        self.num_updates = int(state["num_updates"])
        if state["online"] and not self.online:
            self.start_online()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = sorted(set(self._modules()) - set(state))
        if missing:
            raise KeyError(f"checkpoint lacks {missing}: was it written by a different agent?")
        for name, m in self._modules().items():
            m.load_state_dict(state[name])
        self.num_updates = int(state["num_updates"])
        if bool(state["online"]):
            self.start_online()


def soft_update(target: torch.nn.Module, source: torch.nn.Module, tau: float) -> None:
    """``target <- (1 - tau) * target + tau * source`` for every parameter, in one multi-tensor ``lerp``
    (the same values as a per-parameter ``lerp_``, without a Python call per tensor)."""
    with torch.no_grad():
        torch._foreach_lerp_(list(target.parameters()), list(source.parameters()), tau)


def ensemble_td_loss(q: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Sum over members of each member's mean squared TD error; ``q`` is ``[N, B]``, ``target`` ``[B]``."""
    return torch.nn.functional.mse_loss(q, target.unsqueeze(0).expand_as(q), reduction="none").mean(1).sum()


def optimizer_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    """Zero the gradients, backpropagate ``loss`` and step."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


class OffPolicyAgent(Learner):
    """Base of TD3, SAC and their offline variants. Subclasses build the networks
    (``actor``, ``critic``, ``critic_target``) and optimisers, then list every stateful
    object in :meth:`_modules` so that checkpoints capture it."""

    actor: torch.nn.Module
    critic: torch.nn.Module
    critic_target: torch.nn.Module
    actor_optimizer: torch.optim.Optimizer
    critic_optimizer: torch.optim.Optimizer

    def __init__(self, obs_dim: int, action_dim: int, cfg: AgentConfig, device: str | torch.device = "cpu"):
        super().__init__(cfg)
        self.device = torch.device(device)
        self.obs_dim, self.action_dim = obs_dim, action_dim
        self._compiled: tuple[LossFn, LossFn] | None = None

    # ------------------------------------------------------------ interface
    def act(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        """Evaluation action, or with ``deterministic=False`` the exploration action."""
        raise NotImplementedError

    def critic_loss(self, batch: Batch) -> tuple[torch.Tensor, Metrics]:
        raise NotImplementedError

    def actor_loss(self, batch: Batch) -> tuple[torch.Tensor, Metrics]:
        raise NotImplementedError

    def after_actor_step(self) -> Metrics:
        """Extra work after each actor step (e.g. SAC's temperature); returns metrics."""
        return {}

    def update_targets(self, actor_updated: bool) -> None:
        """Polyak-average target networks after an update."""
        raise NotImplementedError

    # ------------------------------------------------------------- learning
    def update(self, batch: Batch) -> Metrics:
        """One critic step; every ``policy_freq`` critic steps also an actor step."""
        self.num_updates += 1
        info = self._critic_step(batch)
        actor_updated = self.num_updates % self.cfg.policy_freq == 0
        if actor_updated:
            info.update(self._actor_step(batch))
        self.update_targets(actor_updated)
        return info

    def _critic_step(self, batch: Batch) -> Metrics:
        critic_loss, info = self._losses()[0](batch)
        optimizer_step(self.critic_optimizer, critic_loss)
        info["critic_loss"] = critic_loss.detach()
        return info

    def _actor_step(self, batch: Batch) -> Metrics:
        self.critic.requires_grad_(False)
        try:
            actor_loss, info = self._losses()[1](batch)
        finally:
            self.critic.requires_grad_(True)
        optimizer_step(self.actor_optimizer, actor_loss)
        return {"actor_loss": actor_loss.detach(), **info, **self.after_actor_step()}

    def _losses(self) -> tuple[LossFn, LossFn]:
        """:meth:`critic_loss` and :meth:`actor_loss`, through ``torch.compile`` (built on first use)
        when ``cfg.compile`` is set. The optimiser steps stay eager."""
        if not self.cfg.compile:
            return self.critic_loss, self.actor_loss
        if self._compiled is None:
            self._compiled = (torch.compile(self.critic_loss), torch.compile(self.actor_loss))
        return self._compiled

    # ---------------------------------------------------------- checkpoints
    def _modules(self) -> dict[str, Any]:
        return {
            "actor": self.actor,
            "critic": self.critic,
            "critic_target": self.critic_target,
            "actor_optimizer": self.actor_optimizer,
            "critic_optimizer": self.critic_optimizer,
        }
