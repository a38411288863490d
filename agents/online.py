"""Online interaction: step one environment with an agent and feed a replay buffer.

The two halves are separate so that they can run in different processes (Ray collection,
:mod:`rlft.runtime.transition_workers`):

* :class:`EnvStepper` holds the env and the current observation, acts and steps. Its state is
  how the current episode was reset (a seed, or the env's RNG state) plus the actions taken
  since, so :meth:`EnvStepper.load_state_dict` rebuilds the env exactly by resetting again and
  replaying them (gymnasium's simulators are deterministic given the actions).
* :class:`EpisodeRecorder` writes transitions into the buffer and, when an episode ends, its
  Monte-Carlo returns-to-go.

:class:`LocalCollector` is the two together in this process: the ``rollout.backend=local``
collection of the offline-to-online runner.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import gymnasium as gym
import numpy as np
import torch

from rlft.agents.base import Learner
from rlft.agents.replay_buffer import ReplayBuffer
from rlft.offline.returns import episode_returns_to_go
from rlft.common.seeding import generator_state, set_generator_state

ActFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class EpisodeEnd:
    """Statistics of an episode that just finished."""

    episode_return: float
    length: int
    terminated: bool


@dataclass
class Transitions:
    """Consecutive transitions of one env (leading dim: steps); ``version``: the policy version
    (the learner's update count) that acted."""

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_observations: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    version: int

    def __len__(self) -> int:
        return len(self.rewards)


class AgentActor:
    """The agent as the evaluator and the env stepper call it: observations (numpy or torch) in,
    actions of the same kind out. ``reset(num_envs)`` tells a planning agent that new episodes
    begin in this acting stream (evaluation and exploration are separate streams). With
    ``uniform`` it ignores the agent and draws actions uniformly from ``[-1, 1]`` (every env's
    action box, :func:`rlft.envs.wrappers.rescale_action`) with torch's RNG: the random
    first steps of learning from scratch (RLPD's ``start_training``, SB3's ``learning_starts``)."""

    def __init__(self, agent: Learner, device: torch.device, deterministic: bool, uniform: bool = False):
        self.agent, self.device, self.deterministic, self.uniform = agent, device, deterministic, uniform

    def __call__(self, obs: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        obs_t = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        if self.uniform:
            action = torch.rand(obs_t.shape[0], self.agent.action_dim, device=self.device) * 2.0 - 1.0
        else:
            action = self.agent.act(obs_t, deterministic=self.deterministic)
        return action if isinstance(obs, torch.Tensor) else action.cpu().numpy()

    def reset(self, num_envs: int) -> None:
        if hasattr(self.agent, "reset"):
            self.agent.reset(num_envs, self.deterministic)

    def episodes_ended(self, ended: np.ndarray) -> None:
        """Sub-envs ``ended`` (a mask) reset themselves: a planning agent forgets their warm starts."""
        if hasattr(self.agent, "episodes_ended"):
            self.agent.episodes_ended(ended, self.deterministic)


class EnvStepper:
    """One env and its current observation; :meth:`run` acts and steps, resetting ended episodes."""

    def __init__(self, env: gym.Env, seed: int, device: torch.device):
        self.env, self.device = env, device
        self._last_reset: dict[str, Any] = {"seed": seed}
        self._episode_actions: list[np.ndarray] = []
        self.obs, _ = env.reset(seed=seed)

    @property
    def at_episode_start(self) -> bool:
        return not self._episode_actions

    def run(self, act: ActFn, steps: int, version: int) -> Transitions:
        """``steps`` steps with ``act``. A stateful ``act`` (a planner's warm start) exposes
        ``reset(num_envs)``, called at each episode's first step."""
        observations, actions, rewards, next_observations, terminations, truncations = ([] for _ in range(6))
        for _ in range(steps):
            if not self._episode_actions and hasattr(act, "reset"):
                act.reset(1)
            obs_t = torch.as_tensor(self.obs, dtype=torch.float32, device=self.device).unsqueeze(0)
            action = act(obs_t)[0].cpu().numpy()
            next_obs, reward, terminated, truncated, _ = self.env.step(action)
            observations.append(self.obs)
            actions.append(action)
            rewards.append(reward)
            next_observations.append(next_obs)
            terminations.append(terminated)
            truncations.append(truncated)
            self._episode_actions.append(action)
            self.obs = next_obs
            if terminated or truncated:
                self._last_reset = {"rng": generator_state(self.env.unwrapped.np_random)}
                self._episode_actions = []
                self.obs, _ = self.env.reset()
        return Transitions(np.stack(observations), np.stack(actions), np.asarray(rewards, dtype=np.float64),
                           np.stack(next_observations), np.asarray(terminations, dtype=bool),
                           np.asarray(truncations, dtype=bool), version=version)

    def state_dict(self) -> dict[str, Any]:
        """How the current episode was reset and the actions taken since."""
        actions = torch.as_tensor(np.stack(self._episode_actions)) if self._episode_actions else torch.zeros(0)
        return {"last_reset": self._last_reset, "actions": actions}  # tensors: checkpoints load weights-only

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Redo the saved reset and replay the episode's actions: the env is where it was."""
        last = state["last_reset"]
        if "seed" in last:
            self.obs, _ = self.env.reset(seed=int(last["seed"]))
        else:
            set_generator_state(self.env.unwrapped.np_random, last["rng"])
            self.obs, _ = self.env.reset()
        actions = list(state["actions"].numpy())
        for action in actions:
            self.obs, _, terminated, truncated, _ = self.env.step(action)
            if terminated or truncated:
                raise RuntimeError("replaying a saved episode ended it early: is the env deterministic?")
        self._last_reset, self._episode_actions = last, actions


class EpisodeRecorder:
    """Writes one env's transitions into ``buffer``. The buffer stores the true next observation
    and ``terminated`` (not ``truncated``) as the done flag, so time-limit cuts keep bootstrapping
    (Pardo et al. 2018). When an episode ends, its Monte-Carlo returns-to-go (discount
    ``mc_discount``, Cal-QL's sparse-failure rule with ``sparse_fail_reward``) are written too."""

    def __init__(self, buffer: ReplayBuffer, mc_discount: float = 0.99, sparse_fail_reward: float | None = None):
        self.buffer, self.mc_discount, self.sparse_fail_reward = buffer, mc_discount, sparse_fail_reward
        self._rows: list[torch.Tensor] = []
        self.episode_return, self.episode_length, self.episodes = 0.0, 0, 0

    def record(self, t: Transitions) -> list[EpisodeEnd]:
        """Store ``t`` (one env's steps in order); returns the episodes that ended in it."""
        ends, start = [], 0
        stops = (np.flatnonzero(t.terminated | t.truncated) + 1).tolist()
        for stop in stops if stops and stops[-1] == len(t) else [*stops, len(t)]:
            if stop == start:  # an empty round
                break
            self._rows.append(self.buffer.add(t.observations[start:stop], t.actions[start:stop],
                                              t.rewards[start:stop], t.next_observations[start:stop],
                                              t.terminated[start:stop], t.version))
            self.episode_return += float(t.rewards[start:stop].astype(np.float64).sum())
            self.episode_length += stop - start
            if t.terminated[stop - 1] or t.truncated[stop - 1]:
                ends.append(self._end_episode(bool(t.terminated[stop - 1])))
            start = stop
        return ends

    def _end_episode(self, terminated: bool) -> EpisodeEnd:
        rows = torch.cat(self._rows)
        stored = self.buffer.rewards[rows, 0].cpu().numpy()
        self.buffer.end_episode(rows, episode_returns_to_go(stored, self.mc_discount, self.sparse_fail_reward))
        end = EpisodeEnd(self.episode_return, self.episode_length, terminated)
        self._rows, self.episodes = [], self.episodes + 1
        self.episode_return, self.episode_length = 0.0, 0
        return end

    def state_dict(self) -> dict[str, Any]:
        rows = torch.cat(self._rows).cpu() if self._rows else torch.zeros(0, dtype=torch.long)
        return {"rows": rows, "episode_return": self.episode_return, "episode_length": self.episode_length,
                "episodes": self.episodes}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        rows = state["rows"].to(self.buffer.device)
        self._rows = [rows] if len(rows) else []
        self.episode_return, self.episode_length = float(state["episode_return"]), int(state["episode_length"])
        self.episodes = int(state["episodes"])


class LocalCollector:
    """Online collection in this process (``rollout.backend=local``): one env, stepped one
    transition per round by the learner itself, with its own exploration."""

    steps_per_round = 1

    def __init__(self, env: gym.Env, buffer: ReplayBuffer, seed: int, device: torch.device,
                 mc_discount: float = 0.99, sparse_fail_reward: float | None = None):
        self.stepper = EnvStepper(env, seed, device)
        self.recorder = EpisodeRecorder(buffer, mc_discount, sparse_fail_reward)
        self._round: tuple[Learner, int, int] | None = None
        self._explore: AgentActor | None = None

    @property
    def can_checkpoint(self) -> bool:
        """At episode boundaries (a checkpoint then holds no half-recorded episode)."""
        return self.stepper.at_episode_start

    def start(self, agent: Learner, steps: int, version: int, uniform: bool = False) -> None:
        """Begin a round of ``steps`` transitions acted by ``agent`` (policy ``version``), or
        uniformly at random (:class:`AgentActor`)."""
        self._round = (agent, steps, version, uniform)

    def finish(self) -> list[EpisodeEnd]:
        """Run the round; its transitions are in the buffer. Returns the episodes that ended."""
        agent, steps, version, uniform = self._round
        self._round = None
        if self._explore is None or self._explore.agent is not agent or self._explore.uniform != uniform:
            self._explore = AgentActor(agent, self.stepper.device, deterministic=False, uniform=uniform)
        return self.recorder.record(self.stepper.run(self._explore, steps, version))

    def state_dict(self) -> dict[str, Any]:
        return {"stepper": self.stepper.state_dict(), "recorder": self.recorder.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stepper.load_state_dict(state["stepper"])
        self.recorder.load_state_dict(state["recorder"])

    def close(self) -> None:
        self.stepper.env.close()
