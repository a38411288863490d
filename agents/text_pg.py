"""Policy-gradient fine-tuning of language policies on multi-turn text tasks: PPO and GRPO.

Both train on a :class:`rlft.agents.text_rollout.TextBatch` and differ in where the advantage
comes from and at which granularity the probability ratio is clipped:

- **PPO over turns** (RL4VLM, Zhai et al. 2024, Sec. 4): each turn (one whole reply) is an
  action. Its log-probability is ``lambda * log p(reasoning tokens) + log p(action tokens)``
  (Sec. 4.2; the action span is found by the env's parser, ``info["action_start/end"]``, never
  by token ids), the ratio of that turn log-probability is clipped, and advantages are GAE over
  turns from a value head on the LM's hidden state at the last prompt token.
- **GRPO** (Shao et al. 2024, DeepSeekMath Sec. 4.1, eq. 3): no critic. Groups of episodes start
  from the same task instance. Outcome supervision (Sec. 4.1.2) gives every model token of episode
  ``i`` the advantage ``(R_i - mean(R)) / std(R)``; process supervision (Sec. 4.1.3, the default
  here, since multi-turn tasks reward each turn) standardises the turn rewards over the group and
  gives each turn the sum of the standardised rewards from it onwards. Rewards are standardised
  with the unbiased std plus ``group_std_eps`` (1e-4, as TRL's ``GRPOTrainer``). The ratio is
  clipped per token, and an optional ``beta * KL(pi || pi_ref)`` uses the unbiased k3 estimator
  (eq. 4) against the policy RL starts from (Sec. 4.1: the SFT model), frozen at the first update,
  after SFT, and saved with the learner's state.

How a batch becomes optimiser steps (:meth:`TextPolicyGradient._optimizer_steps`): PPO steps on
shuffled turns, its loss the mean over a step's turns; GRPO steps on whole episodes in batch order,
its loss the mean over a step's episodes of each episode's token mean (SimpleVLA-RL's ``dp_rob.py``:
one trajectory per micro-batch, its token mean divided by the accumulation count). Both are the
same however a step is cut into forward passes, so ``minibatch_samples`` only bounds memory.

``skip_uninformative`` is rlft's rule, off by default and in every reference recipe: a batch whose
episodes all returned the same trains no policy loss (GRPO: no step at all, so neither the weights
nor Adam's moments move; PPO: the value head alone).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from rlft.agents.frozen_weights import FrozenWeights
from rlft.agents.optim import adam, adamw
from rlft.agents.ppo import compute_gae
from rlft.agents.text_rollout import TextBatch
from rlft.policies.llm import Conversation, LLMPolicy, SequenceScores
from rlft.policies.precision import autocast, check_autocast


@dataclass
class TextPGConfig:
    """Hyperparameters. Defaults are rlft's small-model settings; each reference recipe
    (``configs/text_method/*.yaml`` and the experiments ``llm/*``, ``vla/*``) sets its own values and
    cites the file each comes from (``benchmarks/recipes.md`` lists them against the references)."""

    algorithm: Literal["ppo", "grpo"] = "ppo"
    lr: float = 3e-4
    epochs: int = 4
    minibatch_samples: int = 32  # token sequences per forward/backward pass (PPO: a step is grad_accumulation of them)
    minibatch_episodes: int = 16  # GRPO: whole episodes per optimiser step, in batch order (SimpleVLA-RL: 128)
    clip: float = 0.2
    gamma: float = 0.9
    gae_lambda: float = 0.95
    value_coef: float = 0.5
    policy_coef: float = 1.0  # the policy loss's weight (RL4VLA's loss sums 7 equal per-dimension copies: 7)
    entropy_coef: float = 0.0
    cot_lambda: float = 1.0  # RL4VLM's weight on reasoning tokens (0.5 in its CoT runs); 1 = plain sum
    kl_coef: float = 0.0  # GRPO's beta (DeepSeekMath: 0.04); > 0 keeps a frozen copy of the trained weights
    supervision: Literal["outcome", "process"] = "process"  # GRPO: episode return, or per-turn rewards
    max_grad_norm: float | None = 1.0  # None: no clipping (the norm is still logged)
    normalize_advantages: bool = True  # PPO: over every turn of the batch (RL4VLA: the whole buffer)
    advantage_eps: float = 1e-8  # PPO: (A - mean) / (std + advantage_eps) (RL4VLM: 1e-5)
    group_std_eps: float = 1e-4  # GRPO: (R - mean) / (std + group_std_eps) (TRL: 1e-4)
    ratio_cap: float | None = None  # PPO: a turn whose ratio exceeds it keeps only the clipped term (RL4VLM: 10)
    bootstrap_truncated: bool = True  # PPO: a turn-limit cut bootstraps from V(final state); False: terminal
    skip_uninformative: bool = False  # rlft's rule, off in every reference: no policy loss when all returns tie
    clip_high: float | None = None  # upper ratio clip 1 + clip_high (DAPO/SimpleVLA-RL "clip-higher": 0.28)
    grad_accumulation: int = 1  # PPO: minibatches per optimiser step (RL4VLA: 20 of 8 samples)
    value_lr: float | None = None  # the value head's own learning rate (RL4VLA: 3e-3 against 1e-4); None: lr
    value_clip: float | None = None  # PPO: clip the new value to old +- value_clip, take the worse loss
    value_loss: Literal["mse", "huber"] = "mse"  # RL4VLA: Huber with delta 10
    huber_delta: float = 10.0
    value_hidden: tuple[int, ...] = ()  # the value head's MLP widths (RL4VLA: 512, 128); () a linear head
    value_activation: Literal["gelu", "relu"] = "gelu"  # RL4VLA's head (gelu) or RL4VLM's (relu), policies/llm.py
    weight_decay: float = 0.0  # > 0: AdamW (RL4VLA, SimpleVLA-RL: torch's default 0.01); 0: Adam
    adam_eps: float = 1e-8  # RL4VLM: 1e-7
    lr_schedule: Literal["constant", "cosine"] = "constant"  # cosine: torch's CosineAnnealingLR, one step per update
    cosine_updates: int = 25  # its T_max in updates (RL4VLM: 25)
    lr_end: float = 0.0  # its eta_min (RL4VLM: 1e-9)
    autocast: str = "float32"  # bfloat16: training forward passes under torch.autocast (policies/precision.py)

    def __post_init__(self) -> None:
        check_autocast(self.autocast, "text_method.algorithm.autocast")
        choices = {"algorithm": ("ppo", "grpo"), "supervision": ("outcome", "process"), "value_loss": ("mse", "huber"),
                   "value_activation": ("gelu", "relu"), "lr_schedule": ("constant", "cosine")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"text_method.algorithm.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if not 0.0 <= self.cot_lambda <= 1.0:
            raise ValueError(f"cot_lambda must be in [0, 1], got {self.cot_lambda}")
        for name in ("grad_accumulation", "minibatch_samples", "minibatch_episodes", "epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"text_method.algorithm.{name} must be >= 1, got {getattr(self, name)}")
        if self.cosine_updates < 0:  # 0: a run of no updates (SFT only), where the period is the run's length
            raise ValueError(f"text_method.algorithm.cosine_updates must be >= 0, got {self.cosine_updates}")

    @property
    def clip_range(self) -> tuple[float, float]:
        """Lower and upper bounds of the clipped ratio."""
        return 1.0 - self.clip, 1.0 + (self.clip if self.clip_high is None else self.clip_high)


STD_EPS = 1e-4  # added to the group's std (TRL GRPOTrainer: (r - mean) / (std + 1e-4))


def _group_std(rewards: np.ndarray) -> float:
    """Unbiased std of a group's rewards (``torch.std``'s default, as TRL uses); 0 for one reward."""
    return float(rewards.std(ddof=1)) if len(rewards) > 1 else 0.0


def group_advantages(returns: np.ndarray, groups: np.ndarray, eps: float = STD_EPS) -> np.ndarray:
    """GRPO's outcome advantages: each return standardised within its group (zero if all equal)."""
    advantages = np.zeros_like(returns, dtype=np.float64)
    for g in np.unique(groups):
        members = groups == g
        r = returns[members]
        std = _group_std(r)
        advantages[members] = (r - r.mean()) / (std + eps) if std > 0 else 0.0
    return advantages


def process_advantages(turn_rewards: list[np.ndarray], groups: np.ndarray, eps: float = STD_EPS) -> list[np.ndarray]:
    """GRPO with process supervision (DeepSeekMath Sec. 4.1.3): every turn reward is standardised
    over all turn rewards of its group, and a turn's advantage is the sum of the standardised
    rewards from that turn to the episode's end. ``turn_rewards[e]`` holds episode ``e``'s rewards."""
    advantages: list[np.ndarray] = [np.zeros(len(r)) for r in turn_rewards]
    for g in np.unique(groups):
        members = np.flatnonzero(groups == g)
        pooled = np.concatenate([turn_rewards[e] for e in members])
        std = _group_std(pooled)
        if std == 0:
            continue
        for e in members:
            normalised = (turn_rewards[e] - pooled.mean()) / (std + eps)
            advantages[e] = np.cumsum(normalised[::-1])[::-1].copy()
    return advantages


def action_token_weights(policy: LLMPolicy, tokens: list[int], action_span: tuple[int, int] | None,
                         cot_lambda: float) -> np.ndarray:
    """Per-token weights of one reply: 1 on tokens overlapping the action's characters (and on the
    end-of-turn token), ``cot_lambda`` on the reasoning around it."""
    weights = np.ones(len(tokens))
    if cot_lambda == 1.0 or action_span is None:
        return weights
    ends = [len(policy.tokenizer.decode(tokens[: k + 1], skip_special_tokens=True)) for k in range(len(tokens))]
    starts = [0] + ends[:-1]
    for k, (s, e) in enumerate(zip(starts, ends)):
        if e > s and (e <= action_span[0] or s >= action_span[1]):
            weights[k] = cot_lambda
    return weights


@dataclass
class _Prepared:
    """Flat per-token and per-turn tensors of a batch, indexed by sample."""

    rows: torch.Tensor  # [K] sample index of each model token
    cols: torch.Tensor  # [K] position of each model token
    turn_of: torch.Tensor  # [K] turn index of each model token
    weight: torch.Tensor  # [K] RL4VLM weight of each token
    old_log_prob: torch.Tensor  # [K] sampled log-probability
    ref_log_prob: torch.Tensor | None  # [K] under the reference policy (GRPO's KL)
    token_advantage: torch.Tensor  # [K] GRPO: the episode's advantage; PPO: unused
    token_scale: torch.Tensor  # [K] 1 / tokens in the token's episode (GRPO's per-episode mean)
    episode_of: torch.Tensor  # [K]
    turn_sample: torch.Tensor  # [T] sample of each turn
    value_pos: torch.Tensor  # [T] token index where each turn's state value is read
    turn_advantage: torch.Tensor  # [T]
    turn_return: torch.Tensor  # [T]
    turn_value: torch.Tensor  # [T] the value at collection (PPO's value clipping)
    informative: bool = True  # the episodes' returns differ (else normalised advantages are pure noise)


class TextPolicyGradient:
    """PPO over turns or GRPO on a :class:`LLMPolicy` (see the module docstring)."""

    def __init__(self, policy: LLMPolicy, config: TextPGConfig, generator: torch.Generator | None = None):
        if config.algorithm == "ppo" and policy.value_head is None:
            raise ValueError("PPO over turns needs a policy with a value head (LLMPolicy(value_head=True))")
        self.policy = policy
        self.config = config
        self.generator = generator or torch.Generator().manual_seed(0)
        head = [] if policy.value_head is None else list(policy.value_head.parameters())
        head_ids = {id(p) for p in head}
        groups = [{"params": [p for p in policy.trainable_parameters() if id(p) not in head_ids], "lr": config.lr}]
        if head:
            groups.append({"params": head, "lr": config.value_lr if config.value_lr is not None else config.lr})
        if config.weight_decay > 0:
            self.optimizer = adamw(groups, lr=config.lr, eps=config.adam_eps, weight_decay=config.weight_decay)
        else:
            self.optimizer = adam(groups, lr=config.lr, eps=config.adam_eps)
        self.scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(
            self.optimizer, T_max=max(config.cosine_updates, 1), eta_min=config.lr_end)
            if config.lr_schedule == "cosine" else None)
        # GRPO's pi_ref: the LM's trained weights (LoRA: the adapters) as they were at the first update
        self.reference: FrozenWeights | None = None

    @torch.no_grad()
    def _prepare(self, batch: TextBatch) -> _Prepared:
        cfg = self.config
        rows, cols, turn_of, weight, old, episode_of = [], [], [], [], [], []
        turn_episode = np.zeros(len(batch.turns), dtype=int)
        for e, episode in enumerate(batch.episodes):
            turn_episode[episode.turns] = e
        for t, turn in enumerate(batch.turns):
            start, end = turn.span
            sample = batch.samples[turn.sample]
            reply = sample.tokens[start:end]
            rows += [turn.sample] * len(reply)
            cols += list(range(start, end))
            turn_of += [t] * len(reply)
            weight += action_token_weights(self.policy, reply, turn.action_span, cfg.cot_lambda).tolist()
            old += sample.sampled_log_probs[start:end]
            episode_of += [int(turn_episode[t])] * len(reply)
        prepared = _Prepared(
            rows=torch.tensor(rows), cols=torch.tensor(cols), turn_of=torch.tensor(turn_of),
            weight=torch.tensor(weight, dtype=torch.float32), old_log_prob=torch.tensor(old, dtype=torch.float32),
            ref_log_prob=None, token_advantage=torch.zeros(len(rows)), token_scale=torch.zeros(len(rows)),
            episode_of=torch.tensor(episode_of), turn_sample=torch.tensor([t.sample for t in batch.turns]),
            value_pos=torch.tensor([t.span[0] - 1 for t in batch.turns]),
            turn_advantage=torch.zeros(len(batch.turns)), turn_return=torch.zeros(len(batch.turns)),
            turn_value=torch.zeros(len(batch.turns)),
        )
        if not self.policy.samples_exact_log_probs or cfg.autocast != "float32":  # the old policy as updates score it
            prepared.old_log_prob = self._token_log_probs(batch, prepared)
        returns = batch.episode_returns()
        prepared.informative = bool(returns.max() > returns.min()) or not cfg.skip_uninformative
        tokens_per_episode = torch.bincount(prepared.episode_of, minlength=len(batch.episodes)).float()
        prepared.token_scale = 1.0 / tokens_per_episode[prepared.episode_of]
        if cfg.algorithm == "grpo":
            groups = np.array([ep.group for ep in batch.episodes])
            if cfg.supervision == "outcome":
                advantages = group_advantages(returns, groups, cfg.group_std_eps)
                prepared.token_advantage = torch.as_tensor(advantages, dtype=torch.float32)[prepared.episode_of]
            else:
                rewards = [np.array([batch.turns[t].reward for t in ep.turns]) for ep in batch.episodes]
                per_turn = torch.zeros(len(batch.turns))
                for episode, adv in zip(batch.episodes, process_advantages(rewards, groups, cfg.group_std_eps)):
                    per_turn[episode.turns] = torch.as_tensor(adv, dtype=torch.float32)
                prepared.token_advantage = per_turn[prepared.turn_of]
            if cfg.kl_coef > 0 and prepared.informative:
                with self.reference.swapped_in():
                    prepared.ref_log_prob = self._token_log_probs(batch, prepared)
        else:
            self._turn_advantages(batch, prepared)
        return prepared

    def _token_log_probs(self, batch: TextBatch, prepared: _Prepared) -> torch.Tensor:
        log_probs = torch.zeros(len(prepared.rows))
        for chunk in self._chunks(len(batch.samples)):
            scores = self._score([batch.samples[j] for j in chunk])
            picked, rows = self._localize(prepared, chunk, len(batch.samples))
            log_probs[picked] = scores.log_probs[rows, prepared.cols[picked]]
        return log_probs

    @staticmethod
    def _localize(prepared: _Prepared, chunk: list[int], n_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Which model tokens lie in the chunk's samples, and their row in the chunk's batch."""
        local = torch.full((n_samples,), -1, dtype=torch.long)
        local[torch.tensor(chunk)] = torch.arange(len(chunk))
        picked = local[prepared.rows] >= 0
        return picked, local[prepared.rows[picked]]

    def _turn_advantages(self, batch: TextBatch, prepared: _Prepared) -> None:
        """GAE over each episode's turns; a truncated episode bootstraps from ``V(final state)``, or
        with ``bootstrap_truncated`` off ends as if terminated (RL4VLM, RL4VLA: done at the time limit)."""
        cfg = self.config
        value_at = {}
        wanted = {(t.sample, t.span[0] - 1) for t in batch.turns}
        if cfg.bootstrap_truncated:
            wanted |= {ep.bootstrap for ep in batch.episodes if ep.bootstrap is not None}
        by_sample: dict[int, list[int]] = {}
        for sample, pos in wanted:
            by_sample.setdefault(sample, []).append(pos)
        samples = sorted(by_sample)
        for chunk in self._chunks(len(samples)):
            ids = [samples[k] for k in chunk]
            scores = self._score([batch.samples[j] for j in ids])
            positions = torch.tensor([(r, p) for r, j in enumerate(ids) for p in by_sample[j]])
            values = self.policy.values(scores.hidden, positions)
            for (r, p), v in zip(positions.tolist(), values.tolist()):
                value_at[(ids[r], p)] = v
        for episode in batch.episodes:
            turns = [batch.turns[t] for t in episode.turns]
            rewards = torch.tensor([[t.reward] for t in turns])
            values = torch.tensor([[value_at[(t.sample, t.span[0] - 1)]] for t in turns])
            cut = episode.bootstrap is not None and cfg.bootstrap_truncated
            last = torch.tensor([value_at[episode.bootstrap] if cut else 0.0])
            adv, ret = compute_gae(rewards, values, torch.zeros_like(rewards), last, cfg.gamma, cfg.gae_lambda)
            prepared.turn_advantage[episode.turns] = adv[:, 0]
            prepared.turn_return[episode.turns] = ret[:, 0]
            prepared.turn_value[episode.turns] = values[:, 0]
        if cfg.normalize_advantages and len(batch.turns) > 1:
            a = prepared.turn_advantage
            prepared.turn_advantage = (a - a.mean()) / (a.std() + cfg.advantage_eps)

    def _score(self, conversations: list[Conversation]) -> SequenceScores:
        """The policy's training forward pass, under ``config.autocast`` (log-probs come out float32)."""
        with autocast(self.policy.device, self.config.autocast):
            return self.policy.score_conversations(conversations)

    def _chunks(self, n: int) -> list[list[int]]:
        """``0..n-1`` in forward passes of ``minibatch_samples``."""
        size = self.config.minibatch_samples
        return [list(range(i, min(i + size, n))) for i in range(0, n, size)]

    def _optimizer_steps(self, batch: TextBatch) -> list[tuple[list[int], int]]:
        """One pass over the batch as optimiser steps: ``(samples, units)`` each, the loss of a step
        being a sum over its units divided by ``units``. PPO: ``minibatch_samples * grad_accumulation``
        shuffled samples, units its turns (the mean over turns). GRPO: ``minibatch_episodes`` whole
        episodes in batch order, units its episodes (the mean over episodes of each episode's token
        mean, SimpleVLA-RL's ``dp_rob.py`` reduction). Either way a step's gradient is the same however
        its samples are cut into forward passes of ``minibatch_samples``."""
        cfg = self.config
        if cfg.algorithm == "grpo":
            steps = []
            for first in range(0, len(batch.episodes), cfg.minibatch_episodes):
                episodes = batch.episodes[first:first + cfg.minibatch_episodes]
                samples = sorted({batch.turns[t].sample for ep in episodes for t in ep.turns})
                steps.append((samples, len(episodes)))
            return steps
        turns_of_sample = np.bincount([t.sample for t in batch.turns], minlength=len(batch.samples))
        order = [j for j in torch.randperm(len(batch.samples), generator=self.generator).tolist()
                 if turns_of_sample[j]]  # prompt-only samples (cut episodes' final states) hold no turn to train
        size = cfg.minibatch_samples * cfg.grad_accumulation
        return [(order[i:i + size], int(turns_of_sample[order[i:i + size]].sum())) for i in range(0, len(order), size)]

    def update(self, batch: TextBatch) -> dict[str, float]:
        """``epochs`` passes of optimiser steps over the batch (:meth:`_optimizer_steps`), then one
        step of the learning-rate schedule; returns the steps' mean losses."""
        cfg = self.config
        if cfg.kl_coef > 0 and self.reference is None:
            self.reference = FrozenWeights(self.policy.model)
        prepared = self._prepare(batch)
        totals: dict[str, float] = {}
        if self.scheduler is not None:
            totals["lr"] = self.scheduler.get_last_lr()[0]  # this update's (the policy group's)
        if cfg.algorithm == "grpo" and not prepared.informative:
            self._step_schedule()
            return totals  # skip_uninformative: every advantage is zero, and Adam's momentum would still move the weights
        steps = 0
        for _ in range(cfg.epochs):
            for samples, units in self._optimizer_steps(batch):
                self.optimizer.zero_grad()
                step: dict[str, float] = {}
                for first in range(0, len(samples), cfg.minibatch_samples):
                    chunk = samples[first:first + cfg.minibatch_samples]
                    for k, v in self._backward(batch, prepared, chunk, units).items():
                        step[k] = step.get(k, 0.0) + v
                limit = cfg.max_grad_norm if cfg.max_grad_norm is not None else float("inf")
                step["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.policy.trainable_parameters(), limit))
                self.optimizer.step()
                steps += 1
                for k, v in step.items():
                    totals[k] = totals.get(k, 0.0) + v
        self._step_schedule()
        return {k: v if k == "lr" else v / max(steps, 1) for k, v in totals.items()}

    def _step_schedule(self) -> None:
        """One step of the learning-rate schedule per update (RL4VLM ``main.py``), trained or skipped."""
        if self.scheduler is not None:
            self.scheduler.step()

    def _backward(self, batch: TextBatch, prepared: _Prepared, chunk: list[int], units: int) -> dict[str, float]:
        """Backpropagate one forward pass's share of its optimiser step's loss (sums over its turns or
        episodes, divided by the step's ``units``); returns those shares (none for a chunk without
        model tokens)."""
        cfg = self.config
        picked, rows = self._localize(prepared, chunk, len(batch.samples))
        if not bool(picked.any()):  # only prompt-only sequences (truncated episodes' final states)
            return {}
        scores = self._score([batch.samples[j] for j in chunk])
        log_prob = scores.log_probs[rows, prepared.cols[picked]]
        entropy = scores.entropy[rows, prepared.cols[picked]]
        metrics: dict[str, float] = {}
        if cfg.algorithm == "grpo":
            policy_loss = self._grpo_loss(prepared, picked, log_prob, metrics) / units
            value_loss = torch.zeros(())
            share = prepared.token_scale[picked]  # the entropy as the policy loss averages: per episode
        else:
            policy_loss, value_loss = self._ppo_losses(prepared, picked, log_prob, scores.hidden, chunk, metrics)
            policy_loss, value_loss = policy_loss / units, value_loss / units
            turns = prepared.turn_of[picked]
            share = 1.0 / torch.bincount(turns)[turns].float()  # the entropy as the policy loss averages: per turn
        entropy = (entropy * share).sum() / units
        loss = cfg.policy_coef * policy_loss + cfg.value_coef * value_loss - cfg.entropy_coef * entropy
        if not prepared.informative:  # skip_uninformative (PPO before a sparse task's first success): values only
            loss = loss - cfg.policy_coef * policy_loss
        loss.backward()
        metrics = {k: v / units for k, v in metrics.items()}
        metrics.update(policy_loss=policy_loss.item(), entropy=entropy.item())
        if cfg.algorithm == "ppo":
            metrics["value_loss"] = value_loss.item()
        return metrics

    def _grpo_loss(self, prepared: _Prepared, picked: torch.Tensor, log_prob: torch.Tensor,
                   metrics: dict[str, float]) -> torch.Tensor:
        """The sum over the picked tokens' episodes of their token means (each token's loss weighted
        by ``1 / tokens in its episode``); ``metrics`` get the same sums of the KL and clip rate."""
        cfg = self.config
        ratio = torch.exp(log_prob - prepared.old_log_prob[picked])
        advantage = prepared.token_advantage[picked]
        low, high = cfg.clip_range
        surrogate = torch.min(ratio * advantage, ratio.clamp(low, high) * advantage)
        per_token = -surrogate
        scale = prepared.token_scale[picked]
        if prepared.ref_log_prob is not None:
            log_ratio_ref = prepared.ref_log_prob[picked] - log_prob
            kl = torch.exp(log_ratio_ref) - log_ratio_ref - 1.0  # k3 estimator (DeepSeekMath eq. 4)
            per_token = per_token + cfg.kl_coef * kl
            metrics["kl_ref"] = float((kl.detach() * scale).sum())
        metrics["clip_fraction"] = float((((ratio < low) | (ratio > high)).float() * scale).sum())
        return (per_token * scale).sum()

    def _ppo_losses(self, prepared: _Prepared, picked: torch.Tensor, log_prob: torch.Tensor, hidden: torch.Tensor,
                    chunk: list[int], metrics: dict[str, float]) -> tuple[torch.Tensor, torch.Tensor]:
        """Sums over the picked turns of the clipped surrogate's loss and of the value loss."""
        cfg = self.config
        turns = prepared.turn_of[picked]
        turn_ids, inverse = turns.unique(return_inverse=True)
        weight = prepared.weight[picked]
        new = torch.zeros(len(turn_ids)).index_add(0, inverse, weight * log_prob)
        old = torch.zeros(len(turn_ids)).index_add(0, inverse, weight * prepared.old_log_prob[picked])
        ratio = torch.exp(new - old)
        advantage = prepared.turn_advantage[turn_ids]
        low, high = cfg.clip_range
        clipped = ratio.clamp(low, high) * advantage
        surrogate = torch.min(ratio * advantage, clipped)
        if cfg.ratio_cap is not None:  # RL4VLM algo/ppo.py: past the cap only the clipped term (no gradient)
            surrogate = torch.where(ratio > cfg.ratio_cap, clipped, surrogate)
        row_of_sample = {j: k for k, j in enumerate(chunk)}
        rows = torch.tensor([row_of_sample[int(j)] for j in prepared.turn_sample[turn_ids]], dtype=torch.long)
        positions = torch.stack([rows, prepared.value_pos[turn_ids]], dim=1)
        values = self.policy.values(hidden, positions)
        value_loss = self._value_loss(values, prepared.turn_value[turn_ids], prepared.turn_return[turn_ids])
        metrics["clip_fraction"] = float(((ratio < low) | (ratio > high)).float().sum())
        return -surrogate.sum(), value_loss.sum()

    def _value_loss(self, values: torch.Tensor, old: torch.Tensor, returns: torch.Tensor) -> torch.Tensor:
        """Per turn: ``0.5 (V - R)^2`` or the Huber loss; with ``value_clip`` the worse of the
        unclipped and the clipped value's loss (PPO2's value clipping; RL4VLA clips at 0.2 with
        Huber delta 10, RL4VLM at 0.1 with the squared loss)."""
        cfg = self.config

        def loss(v: torch.Tensor) -> torch.Tensor:
            if cfg.value_loss == "huber":
                return torch.nn.functional.huber_loss(v, returns, reduction="none", delta=cfg.huber_delta)
            return 0.5 * (v - returns).pow(2)

        per_turn = loss(values)
        if cfg.value_clip is not None:
            per_turn = torch.max(per_turn, loss(old + (values - old).clamp(-cfg.value_clip, cfg.value_clip)))
        return per_turn

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state(),
                "reference": None if self.reference is None else self.reference.weights,
                "scheduler": None if self.scheduler is None else self.scheduler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.reference = None if state["reference"] is None else FrozenWeights(self.policy.model, state["reference"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        elif self.scheduler is not None:
            raise ValueError("this learner follows a learning-rate schedule, but the checkpoint holds none "
                             "(it was written with lr_schedule: constant): resume with the run's own config")

