"""The PPO core every on-policy family shares (Schulman et al. 2017, arXiv 1707.06347).

Rollouts of ``rollout_steps`` agent steps in each of a vector env's sub-envs, generalised
advantage estimation (Schulman et al. 2016, arXiv 1506.02438, Eq. 16) over environment
steps, the clipped surrogate (PPO Eq. 7), a value function on the observation, and
``update_epochs`` passes of shuffled minibatches with an optional KL early stop.

Policy families plug in through :class:`rlft.policies.base.PPOActor`: a sample may hold
``M`` decisions with their own ratios (DPPO's denoising steps), each with its own clip range
and a weight on the shared advantage. A Gaussian MLP (``M = 1``), a residual policy over a
frozen base (a Gaussian policy on :class:`rlft.policies.residual.ResidualVectorEnv`) and
DPPO all use this one update.

Truncated episodes bootstrap: the reward of a step cut by a time limit gets
``gamma * V(final_obs)`` added, so GAE can treat every episode end the same way.

``obs_norm_running`` normalises observations by their running mean and variance over every
observation collected so far, clipped to ``+-obs_clip``, as Stable-Baselines3's ``VecNormalize``
does for its MuJoCo PPO settings; the statistics are frozen outside :meth:`PPO.collect` and
saved with the learner, and :meth:`PPO.normalize` applies them for evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from rlft.agents.optim import adam
from rlft.policies.base import PPOActor
from rlft.policies.encoders import encoded
from rlft.policies.mlp import ACTIVATIONS, mlp
from rlft.policies.precision import autocast, check_autocast


@dataclass
class PPOConfig:
    """PPO hyperparameters (``ppo:`` in configs). Defaults follow DPPO's Gym fine-tuning config."""

    gamma: float = 0.99  # per agent step (an action chunk when the env chunks actions)
    gae_lambda: float = 0.95
    actor_lr: float = 1e-4
    critic_lr: float = 1e-3
    update_epochs: int = 5
    minibatch_size: int = 500
    vf_coef: float = 0.5
    ent_coef: float = 0.0
    max_grad_norm: float | None = 1.0
    clip_critic_grad: bool = True  # False: max_grad_norm clips the actor's gradient only (DPPO)
    target_kl: float | None = 1.0  # stop an update's epochs once the approximate KL exceeds this
    value_clip: float | None = None  # clip value updates around the rollout's values (PPO2 style)
    norm_adv: bool = True  # normalise advantages within each minibatch
    reward_scale_running: bool = True  # divide rewards by the running std of the discounted return
    obs_norm_running: bool = False  # normalise observations by running statistics (SB3's VecNormalize)
    obs_clip: float = 10.0  # VecNormalize's clip_obs
    critic_hidden: Sequence[int] = field(default_factory=lambda: (256, 256, 256))
    critic_activation: str = "mish"  # policies/mlp.py ACTIVATIONS
    critic_warmup_iterations: int = 0  # first iterations update only the critic
    adam_eps: float = 1e-8  # Stable-Baselines3's PPO uses 1e-5
    autocast: str = "float32"  # bfloat16: rollouts' and updates' forward passes under torch.autocast (policies/precision.py)

    def __post_init__(self) -> None:
        check_autocast(self.autocast, "ppo.autocast")
        if self.critic_activation not in ACTIVATIONS:
            raise ValueError(f"unknown critic_activation {self.critic_activation!r}; "
                             f"available: {sorted(ACTIVATIONS)}")


def compute_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    dones: torch.Tensor,
    last_values: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and returns ``[T, N]``: ``A_t = delta_t + gamma lam (1 - d_t) A_{t+1}`` with
    ``delta_t = r_t + gamma (1 - d_t) V_{t+1} - V_t``; ``d_t`` marks an episode end at step ``t``
    and ``V_T`` is ``last_values``."""
    T = len(rewards)
    advantages = torch.zeros_like(rewards)
    next_adv = torch.zeros_like(last_values)
    next_value = last_values
    for t in reversed(range(T)):
        live = 1.0 - dones[t]
        delta = rewards[t] + gamma * live * next_value - values[t]
        next_adv = delta + gamma * lam * live * next_adv
        advantages[t] = next_adv
        next_value = values[t]
    return advantages, advantages + values


class RunningMeanStd:
    """Mean and variance of every sample seen, merged batch by batch (Chan et al.'s parallel
    update, as OpenAI Baselines' ``RunningMeanStd``); ``shape`` is one sample's."""

    def __init__(self, shape: tuple[int, ...] = ()):
        self.count, self.mean, self.var = 1e-4, np.zeros(shape), np.ones(shape)

    def update(self, x: np.ndarray) -> None:
        """Merge a batch ``[n, *shape]``."""
        self.update_from_moments(x.mean(0), x.var(0), len(x))

    def update_from_moments(self, batch_mean: np.ndarray, batch_var: np.ndarray, n: float) -> None:
        """Merge ``n`` samples given by their mean and (population) variance."""
        delta, total = batch_mean - self.mean, self.count + n
        self.mean = self.mean + delta * n / total
        self.var = (self.var * self.count + batch_var * n + delta**2 * self.count * n / total) / total
        self.count = total

    def added_since(self, start: "RunningMeanStd") -> tuple[np.ndarray, np.ndarray, float]:
        """``(mean, var, n)`` of the samples merged into these statistics since they equalled
        ``start``: the inverse of :meth:`update_from_moments`, so that statistics grown apart from
        one start (rollout workers) can be merged into it."""
        n = self.count - start.count
        if n <= 0:
            return np.zeros_like(self.mean), np.zeros_like(self.var), 0.0
        mean = (self.count * self.mean - start.count * start.mean) / n
        delta = mean - start.mean
        m2 = self.var * self.count - start.var * start.count - delta**2 * start.count * n / self.count
        return mean, np.maximum(m2 / n, 0.0), n

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count, "mean": torch.from_numpy(np.array(self.mean)),
                "var": torch.from_numpy(np.array(self.var))}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count = state["count"]
        self.mean, self.var = state["mean"].numpy().astype(np.float64), state["var"].numpy().astype(np.float64)


class RunningReturnScaler:
    """Scales rewards by the running std of each env's discounted return (the ``reward_scale_running``
    of DPPO's fine-tuning, after OpenAI Baselines' ``VecNormalize``)."""

    def __init__(self, num_envs: int, gamma: float, eps: float = 1e-8):
        self.gamma, self.eps = gamma, eps
        self.returns = np.zeros(num_envs)
        self.stats = RunningMeanStd()

    def __call__(self, rewards: np.ndarray, dones: np.ndarray) -> np.ndarray:
        """Scale one step's rewards ``[N]``; ``dones`` resets the return of finished episodes."""
        self.returns = self.returns * self.gamma + rewards
        self.stats.update(self.returns)
        self.returns[dones] = 0.0
        return rewards / np.sqrt(self.stats.var + self.eps)

    def state_dict(self) -> dict[str, Any]:
        return {"returns": torch.from_numpy(self.returns.copy()), "stats": self.stats.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.returns = state["returns"].numpy().astype(np.float64)
        self.stats.load_state_dict(state["stats"])


@dataclass
class Rollout:
    """One iteration's samples, ``[T, N, ...]`` tensors."""

    obs: torch.Tensor
    stored: dict[str, torch.Tensor]
    log_probs: torch.Tensor  # [T, N, M]
    values: torch.Tensor  # [T, N]
    rewards: torch.Tensor  # [T, N], scaled and with truncation bootstraps
    dones: torch.Tensor  # [T, N]
    last_values: torch.Tensor  # [N]
    episodes: list[dict[str, float]]  # return, length, success of every episode that ended
    env_steps: int  # simulator steps taken (an action chunk counts its executed actions)

    @classmethod
    def concat(cls, parts: Sequence["Rollout"], device: str | torch.device = "cpu") -> "Rollout":
        """Rollouts of disjoint sets of envs (rollout workers, in rank order) as one, envs side by side."""
        cat = lambda xs, dim=1: torch.cat([x.to(device) for x in xs], dim=dim)  # noqa: E731
        return cls(cat([p.obs for p in parts]), {k: cat([p.stored[k] for p in parts]) for k in parts[0].stored},
                   cat([p.log_probs for p in parts]), cat([p.values for p in parts]), cat([p.rewards for p in parts]),
                   cat([p.dones for p in parts]), cat([p.last_values for p in parts], 0),
                   [e for p in parts for e in p.episodes], sum(p.env_steps for p in parts))


class PPO:
    """Owns the actor's trainable parameters, the critic and their optimiser."""

    def __init__(
        self,
        actor: PPOActor,
        obs_dim: int,
        cfg: PPOConfig,
        num_envs: int,
        device: str | torch.device = "cpu",
        critic_encoder: nn.Module | None = None,
    ):
        """``critic_encoder`` (its own parameters, e.g. a CNN for pixels) maps observations to the
        value MLP's input; without one the MLP reads ``obs_dim`` raw observation values."""
        self.actor, self.cfg, self.device = actor, cfg, torch.device(device)
        in_dim = critic_encoder.out_dim if critic_encoder is not None else obs_dim
        activation = ACTIVATIONS[cfg.critic_activation]
        self.critic = encoded(critic_encoder, mlp(in_dim, 1, cfg.critic_hidden, activation=activation)).to(self.device)
        self.optimizer = adam(
            [
                {"params": actor.trainable_parameters(), "lr": cfg.actor_lr},
                {"params": self.critic.parameters(), "lr": cfg.critic_lr},
            ],
            eps=cfg.adam_eps,
        )
        self.reward_scaler = RunningReturnScaler(num_envs, cfg.gamma) if cfg.reward_scale_running else None
        self.obs_stats = RunningMeanStd((obs_dim,)) if cfg.obs_norm_running else None
        self.iteration = 0

    def normalize(self, obs: np.ndarray) -> np.ndarray:
        """Observations as the actor and critic see them (unchanged without ``obs_norm_running``)."""
        return normalize_observations(obs, self.obs_stats, self.cfg.obs_clip)

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        """``V(obs)`` in float32 (the critic's forward under ``cfg.autocast``)."""
        with autocast(self.device, self.cfg.autocast):
            return self.critic(obs).squeeze(-1).float()

    # ------------------------------------------------------------ rollouts
    @torch.no_grad()
    def collect(self, env: gym.vector.VectorEnv, obs: np.ndarray, steps: int) -> tuple[Rollout, np.ndarray]:
        """Act for ``steps`` agent steps in every sub-env from ``obs`` (as the env returns them);
        returns the rollout and the next env observations."""
        obs_l, stored_l, logp_l, value_l, reward_l, done_l, episodes = [], [], [], [], [], [], []
        env_steps = 0
        for _ in range(steps):
            if self.obs_stats is not None:
                self.obs_stats.update(np.asarray(obs, dtype=np.float64))
            obs_t = torch.as_tensor(self.normalize(obs), dtype=torch.float32, device=self.device)
            with autocast(self.device, self.cfg.autocast):
                sample = self.actor.explore(obs_t)
            next_obs, reward, terminated, truncated, info = env.step(sample.env_action.float().cpu().numpy())
            reward = np.asarray(reward, dtype=np.float64)
            done = np.asarray(terminated) | np.asarray(truncated)
            if self.reward_scaler is not None:
                reward = self.reward_scaler(reward, done)
            cut = np.flatnonzero(np.asarray(truncated) & ~np.asarray(terminated))
            if len(cut):  # time limit: bootstrap from the value of the last observation
                final = self.normalize(np.stack([np.asarray(info["final_obs"][i], dtype=np.float32) for i in cut]))
                reward[cut] += self.cfg.gamma * self.value(torch.as_tensor(final, device=self.device)).cpu().numpy()
            episodes.extend(finished_episodes(info, done))
            env_steps += simulator_steps(info, done)
            obs_l.append(obs_t)
            stored_l.append({k: v.float() if v.is_floating_point() else v for k, v in sample.stored.items()})
            logp_l.append(sample.log_prob.float())
            value_l.append(self.value(obs_t))
            reward_l.append(torch.as_tensor(reward, dtype=torch.float32, device=self.device))
            done_l.append(torch.as_tensor(done, dtype=torch.float32, device=self.device))
            obs = next_obs
        last_values = self.value(torch.as_tensor(self.normalize(obs), dtype=torch.float32, device=self.device))
        stored = {k: torch.stack([s[k] for s in stored_l]) for k in stored_l[0]}
        rollout = Rollout(
            torch.stack(obs_l),
            stored,
            torch.stack(logp_l),
            torch.stack(value_l),
            torch.stack(reward_l),
            torch.stack(done_l),
            last_values,
            episodes,
            env_steps,
        )
        return rollout, obs

    # --------------------------------------------------------------- update
    def update(self, rollout: Rollout) -> dict[str, float]:
        """PPO epochs over one rollout; returns averaged losses and diagnostics."""
        cfg = self.cfg
        advantages, returns = compute_gae(
            rollout.rewards, rollout.values, rollout.dones, rollout.last_values, cfg.gamma, cfg.gae_lambda
        )
        T, N = rollout.rewards.shape
        flat = lambda x: x.reshape(T * N, *x.shape[2:])  # noqa: E731
        obs, old_logp, old_values = flat(rollout.obs), flat(rollout.log_probs), flat(rollout.values)
        stored = {k: flat(v) for k, v in rollout.stored.items()}
        advantages, returns = flat(advantages), flat(returns)
        clip = self.actor.clip_coefficients().to(self.device)
        weights = self.actor.advantage_weights().to(self.device)
        train_actor = self.iteration >= cfg.critic_warmup_iterations
        sums: dict[str, torch.Tensor] = {}  # on the device: one readback per update, not per minibatch
        updates, stopped = 0, False
        for _ in range(cfg.update_epochs):
            for idx in torch.randperm(T * N, device=self.device).split(cfg.minibatch_size):
                metrics = self._minibatch_step(
                    obs[idx],
                    {k: v[idx] for k, v in stored.items()},
                    old_logp[idx],
                    old_values[idx],
                    advantages[idx],
                    returns[idx],
                    clip,
                    weights,
                    train_actor,
                )
                for k, v in metrics.items():
                    sums[k] = sums[k] + v if k in sums else v
                updates += 1
                if cfg.target_kl is not None and train_actor and float(metrics["ppo/approx_kl"]) > cfg.target_kl:
                    stopped = True
                    break
            if stopped:
                break
        self.iteration += 1
        explained = 1 - (returns - old_values).var() / returns.var().clamp(min=1e-8)
        means = torch.stack([v / max(updates, 1) for v in sums.values()] + [explained]).tolist()
        out = dict(zip([*sums, "ppo/explained_variance"], means, strict=True))
        out.update({"ppo/updates": float(updates), "ppo/kl_stop": float(stopped)})
        return out

    def _minibatch_step(self, obs, stored, old_logp, old_values, adv, returns, clip, weights, train_actor):
        cfg = self.cfg
        values = self.value(obs)
        if cfg.value_clip is not None:
            clipped = old_values + (values - old_values).clamp(-cfg.value_clip, cfg.value_clip)
            v_loss = 0.5 * torch.max((values - returns).pow(2), (clipped - returns).pow(2)).mean()
        else:
            v_loss = 0.5 * (values - returns).pow(2).mean()
        loss = cfg.vf_coef * v_loss
        metrics = {"ppo/value_loss": v_loss.detach()}
        if train_actor:
            with autocast(self.device, cfg.autocast):
                new_logp, entropy = self.actor.evaluate(obs, stored)
            new_logp = new_logp.float()
            if cfg.norm_adv and len(adv) > 1:
                adv = (adv - adv.mean()) / (adv.std() + 1e-8)
            adv = adv[:, None] * weights[None, :]
            log_ratio = new_logp - old_logp
            ratio = log_ratio.exp()
            pg_loss = torch.max(-adv * ratio, -adv * torch.clamp(ratio, 1 - clip, 1 + clip)).mean()
            loss = loss + pg_loss
            if entropy is not None and cfg.ent_coef:
                loss = loss - cfg.ent_coef * entropy.mean()
            with torch.no_grad():
                metrics.update(
                    {
                        "ppo/policy_loss": pg_loss.detach(),
                        "ppo/approx_kl": ((ratio - 1) - log_ratio).mean(),  # k3 estimator
                        "ppo/clip_fraction": ((ratio - 1).abs() > clip).float().mean(),
                    }
                )
                if entropy is not None:
                    metrics["ppo/entropy"] = entropy.mean().detach()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.max_grad_norm is not None:
            groups = self.optimizer.param_groups if cfg.clip_critic_grad else self.optimizer.param_groups[:1]
            nn.utils.clip_grad_norm_([p for group in groups for p in group["params"]], cfg.max_grad_norm)
        self.optimizer.step()
        return metrics

    # ------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        return {
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "reward_scaler": self.reward_scaler.state_dict() if self.reward_scaler is not None else None,
            "obs_stats": self.obs_stats.state_dict() if self.obs_stats is not None else None,
            "iteration": self.iteration,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.reward_scaler is not None:
            self.reward_scaler.load_state_dict(state["reward_scaler"])
        if self.obs_stats is not None:
            self.obs_stats.load_state_dict(state["obs_stats"])
        self.iteration = int(state["iteration"])


def finished_episodes(info: dict[str, Any], done: np.ndarray) -> list[dict[str, float]]:
    """Return, length and success of the sub-envs whose episode ended this step (from the
    ``RecordEpisodeStatistics`` entry every rlft env carries)."""
    out = []
    final = info.get("final_info", info)
    episode = final.get("episode")
    if episode is None:
        return out
    mask = final.get("_episode", done)
    success = final.get("success")
    for i in np.flatnonzero(mask & done):
        record = {"return": float(episode["r"][i]), "length": float(episode["l"][i])}
        if success is not None:
            record["success"] = float(success[i])
        out.append(record)
    return out


def simulator_steps(info: dict[str, Any], done: np.ndarray) -> int:
    """Simulator steps behind one vector step: ``chunk_steps`` of chunked envs (read from the
    final info of sub-envs that just reset), one per sub-env otherwise."""
    total = 0
    final = info.get("final_info", {})
    for i in range(len(done)):
        source = final if done[i] else info
        steps = source.get("chunk_steps")
        total += int(steps[i]) if steps is not None and source.get("_chunk_steps", np.ones(len(done), bool))[i] else 1
    return total


def normalize_observations(obs: np.ndarray, stats: RunningMeanStd | None, clip: float) -> np.ndarray:
    """``obs`` standardised by running statistics and clipped to ``+-clip`` (``stats`` None: as they are)."""
    if stats is None:
        return obs
    scaled = (obs - stats.mean) / np.sqrt(stats.var + 1e-8)
    return np.clip(scaled, -clip, clip).astype(np.float32)
