"""Online interaction: step one environment with an agent and feed a replay buffer.

:class:`EnvStepper` keeps the current observation and episode counters, and can save and
restore the environment's RNG at an episode boundary, which is all an exactly resumable
online run needs (a fresh episode is reset from that RNG).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import gymnasium as gym
import numpy as np
import torch

from rlft.agents.replay_buffer import ReplayBuffer
from rlft.offline.returns import episode_returns_to_go
from rlft.runtime.seeding import generator_state, set_generator_state

ActFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class EpisodeEnd:
    """Statistics of an episode that just finished."""

    episode_return: float
    length: int
    terminated: bool


class EnvStepper:
    """Collects one transition per :meth:`step` into ``buffer``.

    The buffer stores the true next observation and ``terminated`` (not ``truncated``) as
    the done flag, so time-limit cuts keep bootstrapping (Pardo et al. 2018). When an
    episode ends, its Monte-Carlo returns-to-go (discount ``mc_discount``, Cal-QL's
    sparse-failure rule with ``sparse_fail_reward``) are written into the buffer.
    """

    def __init__(
        self,
        env: gym.Env,
        buffer: ReplayBuffer,
        seed: int,
        device: torch.device,
        mc_discount: float = 0.99,
        sparse_fail_reward: float | None = None,
    ):
        self.env, self.buffer, self.device = env, buffer, device
        self.mc_discount, self.sparse_fail_reward = mc_discount, sparse_fail_reward
        self._episode_rows: list[torch.Tensor] = []
        self.episode_return, self.episode_length, self.episodes = 0.0, 0, 0
        self._last_reset: dict[str, Any] = {"seed": seed}
        self.obs, _ = env.reset(seed=seed)

    @property
    def at_episode_start(self) -> bool:
        return self.episode_length == 0

    def step(self, act: ActFn) -> EpisodeEnd | None:
        """Act once; returns the finished episode's statistics when it ended. A stateful ``act``
        (a planner's warm start) exposes ``reset(num_envs)``, called at each episode's first step."""
        if self.at_episode_start and hasattr(act, "reset"):
            act.reset(1)
        obs_t = torch.as_tensor(self.obs, dtype=torch.float32, device=self.device).unsqueeze(0)
        action = act(obs_t).squeeze(0).cpu().numpy()
        next_obs, reward, terminated, truncated, _ = self.env.step(action)
        rows = self.buffer.add(self.obs, action, np.float32(reward), next_obs, np.float32(terminated))
        self._episode_rows.append(rows)
        self.episode_return += float(reward)
        self.episode_length += 1
        self.obs = next_obs
        if not (terminated or truncated):
            return None
        rows = torch.cat(self._episode_rows)
        stored = self.buffer.rewards[rows, 0].cpu().numpy()
        self.buffer.end_episode(rows, episode_returns_to_go(stored, self.mc_discount, self.sparse_fail_reward))
        self._episode_rows = []
        end = EpisodeEnd(self.episode_return, self.episode_length, bool(terminated))
        self.episodes += 1
        self.episode_return, self.episode_length = 0.0, 0
        self._last_reset = {"rng": generator_state(self.env.unwrapped.np_random)}
        self.obs, _ = self.env.reset()
        return end

    def state_dict(self) -> dict[str, Any]:
        """Saveable only at an episode start: it records how the current episode was reset."""
        if not self.at_episode_start:
            raise RuntimeError("EnvStepper state can only be saved at an episode boundary")
        return {"last_reset": self._last_reset, "episodes": self.episodes}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Redo the saved reset, which reproduces the current observation exactly."""
        last = state["last_reset"]
        if "seed" in last:
            self.obs, _ = self.env.reset(seed=int(last["seed"]))
        else:
            set_generator_state(self.env.unwrapped.np_random, last["rng"])
            self.obs, _ = self.env.reset()
        self._last_reset = last
        self.episodes = int(state["episodes"])
        self.episode_return, self.episode_length = 0.0, 0
