"""ArCHer: hierarchical multi-turn actor-critic for language agents (Zhou et al. 2024, arXiv 2402.19446).

Two levels (Sec. 4):

- **Utterance level, off-policy.** A double critic over whole turns, trained from a replay
  buffer with target networks (Polyak ``tau``): ``Q_i(s, a) <- r + gamma (1 - d) V'_i(s')`` and
  ``V_i(s) <- Q'_i(s, a~pi(.|s))``, the action freshly sampled from the current policy.
- **Token level, on the critic's advantage.** The LM is updated by policy gradient on the
  tokens of a freshly sampled reply, weighted by ``A(s, a) = min_i Q_i(s, a) - min_i V_i(s)``.

Defaults follow the released configs (YifeiZhou02/ArCHer@7c771a7 ``scripts/config/default.yaml``: 50
critic and 3 actor steps per iteration on 256 sampled turns each, gamma 0.95, tau 0.1 after every
critic step, gradient norm 1.0, 20 critic-only warm-up iterations, a 100k-turn buffer, actor lr
1e-5 (``archer_city.yaml``, ``archer_detective.yaml``, ``archer_webshop.yaml`` too; the 20Q run
uses 1e-6, the Mistral run 2e-6), raw advantages, and the turn limit taken as the episode's end:
``done`` includes it, so a cut turn's target is its reward alone). The critic lr is rlft's (1e-3,
see ``configs/text_method/archer.yaml``): the paper's critic is a pretrained RoBERTa encoder with MLP
heads fine-tuned at 2e-5; here the critic reads position-aware character features of the
observation and the reply (:func:`rlft.policies.text_mlp.char_features`) through a batched
two-member ensemble trained from scratch, which suits the short, Markov observations of the text
tasks. Observations are the env's turn observations (``TextRolloutConfig.context="turn"``).

rlft's options, off as released:

- ``normalize_advantages``: the actor's advantages standardised per batch. With raw ``min Q - min
  V`` and a 3e-4 actor lr, the tiny NumberLine benchmark's advantages were negative almost
  everywhere (mean about -0.3 against a spread of 0.1), so every actor step pushed the sampled
  replies down and moved probability to unsampled garbage.
- ``actor_kl_coef``: a trust region for the actor, ``beta * KL(pi || pi_prev)`` on the sampled
  reply tokens (k3 estimator, summed over the reply like its log-probability), ``pi_prev`` the actor
  as it was before the iteration's first actor step. It holds back the iteration's later steps from
  where the first one went (the first step starts at ``pi_prev``, where the penalty's gradient is 0).
- ``bootstrap_truncated``: a turn cut by the turn limit bootstraps from ``V'(s')``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rlft.agents.base import soft_update
from rlft.agents.frozen_weights import FrozenWeights
from rlft.agents.optim import adam
from rlft.agents.text_rollout import TextBatch
from rlft.policies.ensemble import CriticEnsemble
from rlft.policies.llm import ChatFormat, LLMPolicy
from rlft.policies.text_mlp import CHAR_VOCAB, char_hot_positions
from torch import nn


@dataclass
class ArcherConfig:
    """Hyperparameters (``text_method.algorithm`` with ``algorithm: archer``)."""

    algorithm: str = "archer"
    critic_lr: float = 1e-3  # rlft's: its critic trains from scratch (the released RoBERTa critic: 2e-5)
    actor_lr: float = 1e-5  # lm_lr of default.yaml (and City, Detective, WebShop); 20Q 1e-6, Mistral 2e-6
    gamma: float = 0.95
    tau: float = 0.1
    critic_epochs: int = 50  # critic steps per iteration
    actor_epochs: int = 3  # actor steps per iteration
    batch_size: int = 256  # turns per step (the released 8 x 32 gradient-accumulation steps)
    buffer_size: int = 100_000  # turns (the released capacity)
    warmup_updates: int = 20  # critic-only iterations before the actor starts
    obs_width: int = 64  # characters of the observation the critic reads
    action_width: int = 16  # characters of the reply the critic reads
    hidden: tuple[int, ...] = (256, 256)
    max_grad_norm: float = 1.0
    normalize_advantages: bool = False  # rlft's option: zero-mean, unit-std advantages per actor batch
    actor_kl_coef: float = 0.0  # rlft's option: beta of the KL to the actor before the iteration's actor steps
    bootstrap_truncated: bool = False  # as released: the turn limit ends the episode (done)

    def __post_init__(self) -> None:
        if self.algorithm != "archer":
            raise ValueError(f"ArcherConfig is for algorithm 'archer', got {self.algorithm!r}")
        if not 0.0 < self.tau <= 1.0:
            raise ValueError(f"tau must be in (0, 1], got {self.tau}")
        if self.actor_kl_coef < 0:
            raise ValueError(f"actor_kl_coef must be >= 0, got {self.actor_kl_coef}")


class TurnCritic(nn.Module):
    """Double utterance-level critic: ``Q_1,2(s, a)`` and ``V_1,2(s)`` from character features."""

    def __init__(self, obs_width: int, action_width: int, hidden: tuple[int, ...]):
        super().__init__()
        self.obs_width, self.action_width = obs_width, action_width
        self.q = CriticEnsemble(obs_width * CHAR_VOCAB, action_width * CHAR_VOCAB, 2, hidden)
        self.v = CriticEnsemble(obs_width * CHAR_VOCAB, 0, 2, hidden)

    def q_values(self, observations: list[str], actions: list[str]) -> torch.Tensor:
        """``[2, B]``: the ensemble on one-hot features of both texts, read as the positions of
        their ones (:meth:`EnsembleMLP.forward_one_hot`, the same function as the dense input)."""
        hot = torch.cat([char_hot_positions(observations, self.obs_width),
                         char_hot_positions(actions, self.action_width, self.obs_width * CHAR_VOCAB)], dim=1)
        return self.q.net.forward_one_hot(hot).squeeze(-1)

    def v_values(self, observations: list[str]) -> torch.Tensor:
        """``[2, B]``."""
        return self.v.net.forward_one_hot(char_hot_positions(observations, self.obs_width)).squeeze(-1)


@dataclass
class Transition:
    observation: str
    action: str
    reward: float
    next_observation: str
    terminated: bool  # no bootstrap: the episode ended (or, bootstrap_truncated off, was cut)


class ArCHer:
    """Off-policy double critic + token-level policy gradient on an :class:`LLMPolicy`."""

    def __init__(self, policy: LLMPolicy, chat: ChatFormat, config: ArcherConfig,
                 generator: torch.Generator | None = None):
        self.policy, self.chat, self.config = policy, chat, config
        self.generator = generator or torch.Generator().manual_seed(0)
        self.critic = TurnCritic(config.obs_width, config.action_width, config.hidden)
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.critic_optimizer = adam(self.critic.parameters(), lr=config.critic_lr)
        self.actor_optimizer = adam(policy.trainable_parameters(), lr=config.actor_lr)
        self.buffer: list[Transition] = []
        self.updates = 0

    # ------------------------------------------------------------------ data
    def add(self, batch: TextBatch) -> None:
        """Append the batch's turns to the replay buffer (oldest dropped past ``buffer_size``)."""
        cut = set() if self.config.bootstrap_truncated else {
            ep.turns[-1] for ep in batch.episodes if not ep.terminated and ep.turns}
        self.buffer.extend(Transition(t.observation, t.text, t.reward, t.next_observation, t.terminated or k in cut)
                           for k, t in enumerate(batch.turns))
        del self.buffer[: max(0, len(self.buffer) - self.config.buffer_size)]

    def _sample(self) -> list[Transition]:
        index = torch.randint(len(self.buffer), (min(self.config.batch_size, len(self.buffer)),),
                              generator=self.generator)
        return [self.buffer[i] for i in index.tolist()]

    def _policy_replies(self, observations: list[str]) -> tuple[list[list[int]], list[list[int]], list[str]]:
        prompts = [self.chat.first_prompt(o) for o in observations]
        replies = self.policy.generate(prompts, generator=self.generator)
        return prompts, [r.tokens for r in replies], [r.text for r in replies]

    # ---------------------------------------------------------------- update
    def critic_targets(self, batch: list[Transition], policy_actions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(q_target [2, B], v_target [2, B])`` from the target critic."""
        with torch.no_grad():
            reward = torch.tensor([t.reward for t in batch])
            live = 1.0 - torch.tensor([float(t.terminated) for t in batch])
            next_v = self.target_critic.v_values([t.next_observation for t in batch])
            q_target = reward + self.config.gamma * live * next_v
            v_target = self.target_critic.q_values([t.observation for t in batch], policy_actions)
        return q_target, v_target

    def _critic_step(self) -> dict[str, float]:
        batch = self._sample()
        observations = [t.observation for t in batch]
        _, _, policy_actions = self._policy_replies(observations)
        q_target, v_target = self.critic_targets(batch, policy_actions)
        q = self.critic.q_values(observations, [t.action for t in batch])
        v = self.critic.v_values(observations)
        loss = F.mse_loss(q, q_target) + F.mse_loss(v, v_target)
        self.critic_optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(self.critic.parameters(), self.config.max_grad_norm)
        self.critic_optimizer.step()
        soft_update(self.target_critic, self.critic, self.config.tau)
        return {"critic_loss": loss.item(), "q_mean": q.mean().item()}

    def _actor_step(self, previous: FrozenWeights | None) -> dict[str, float]:
        batch = self._sample()
        observations = [t.observation for t in batch]
        prompts, replies, texts = self._policy_replies(observations)
        with torch.no_grad():
            advantage = self.advantages(observations, texts)
            raw_mean = advantage.mean().item()
            if self.config.normalize_advantages and len(batch) > 1:
                advantage = (advantage - advantage.mean()) / (advantage.std() + 1e-8)
        sequences = [p + r for p, r in zip(prompts, replies)]
        scores, _ = self.policy.score(sequences)
        mask = torch.zeros_like(scores.log_probs)
        for row, (prompt, reply) in enumerate(zip(prompts, replies)):
            mask[row, len(prompt): len(prompt) + len(reply)] = 1.0
        reply_log_prob = (scores.log_probs * mask).sum(1)
        loss = -(advantage * reply_log_prob).mean()
        metrics = {"advantage_mean": raw_mean}
        if previous is not None:
            with torch.no_grad(), previous.swapped_in():
                previous_log_probs = self.policy.score(sequences)[0].log_probs
            log_ratio = previous_log_probs - scores.log_probs
            kl = ((torch.exp(log_ratio) - log_ratio - 1.0) * mask).sum(1).mean()  # k3, DeepSeekMath eq. 4
            loss = loss + self.config.actor_kl_coef * kl
            metrics["actor_kl"] = kl.item()
        self.actor_optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(self.policy.trainable_parameters(), self.config.max_grad_norm)
        self.actor_optimizer.step()
        return metrics | {"actor_loss": loss.item()}

    def advantages(self, observations: list[str], replies: list[str]) -> torch.Tensor:
        """``min_i Q_i(s, a) - min_i V_i(s)`` from the online critic (``trainer.py`` ``actor_loss``)."""
        return self.critic.q_values(observations, replies).min(0).values - self.critic.v_values(observations).min(0).values

    def update(self, batch: TextBatch) -> dict[str, float]:
        """Store the batch, then ``critic_epochs`` critic steps and (after warm-up) ``actor_epochs`` actor steps."""
        self.add(batch)
        metrics: dict[str, float] = {}
        for _ in range(self.config.critic_epochs):
            metrics.update(self._critic_step())
        if self.updates >= self.config.warmup_updates:
            previous = FrozenWeights(self.policy.model) if self.config.actor_kl_coef > 0 else None
            for _ in range(self.config.actor_epochs):
                metrics.update(self._actor_step(previous))
        self.updates += 1
        metrics["buffer_turns"] = float(len(self.buffer))
        return metrics

    # ------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        return {
            "critic": self.critic.state_dict(), "target_critic": self.target_critic.state_dict(),
            "critic_optimizer": self.critic_optimizer.state_dict(),
            "actor_optimizer": self.actor_optimizer.state_dict(), "generator": self.generator.get_state(),
            "updates": self.updates,
            "buffer": [[t.observation, t.action, t.reward, t.next_observation, t.terminated] for t in self.buffer],
        }

    def load_state_dict(self, state: dict) -> None:
        self.critic.load_state_dict(state["critic"])
        self.target_critic.load_state_dict(state["target_critic"])
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        self.actor_optimizer.load_state_dict(state["actor_optimizer"])
        self.generator.set_state(state["generator"])
        self.updates = int(state["updates"])
        self.buffer = [Transition(o, a, float(r), n, bool(d)) for o, a, r, n, d in state["buffer"]]
