"""Supervised fine-tuning of a language policy on the model tokens of transcripts (the samples
:func:`rlft.offline.transcripts.sft_samples` builds): the loss, one gradient step (shared by
filtered BC and iRe-VLA's supervised stage) and a whole SFT phase."""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from rlft.agents.optim import adam
from rlft.common.progress import Progress
from rlft.policies.llm import Conversation, LLMPolicy


def sft_loss(policy: LLMPolicy, samples: Sequence[Conversation]) -> torch.Tensor:
    """Mean negative log-likelihood of the model tokens of ``samples``."""
    scores = policy.score_conversations(samples)
    width = scores.log_probs.shape[1]
    mask = torch.tensor([s.model_mask + [False] * (width - len(s.tokens)) for s in samples])
    return -(scores.log_probs * mask).sum() / mask.sum()


def sft_step(policy: LLMPolicy, optimizer: torch.optim.Optimizer, samples: Sequence[Conversation], batch_size: int,
             generator: torch.Generator, max_grad_norm: float = 1.0) -> float:
    """One gradient step of :func:`sft_loss` on ``batch_size`` samples drawn with replacement; its loss."""
    index = torch.randint(len(samples), (batch_size,), generator=generator)
    loss = sft_loss(policy, [samples[i] for i in index.tolist()])
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(policy.trainable_parameters(), max_grad_norm)
    optimizer.step()
    return loss.item()


def train_sft(policy: LLMPolicy, samples: Sequence[Conversation], steps: int, batch_size: int = 32,
              lr: float = 1e-3, seed: int = 0, log: Callable[[int, float], None] | None = None,
              progress: bool = False) -> list[float]:
    """Supervised fine-tuning on model tokens; returns the loss of every step. ``log(step, loss)``
    is called about 50 times over the run; ``progress`` shows a bar (or periodic lines)."""
    if not samples:
        raise ValueError("no SFT samples")
    generator = torch.Generator().manual_seed(seed)
    optimizer = adam(policy.trainable_parameters(), lr=lr)
    losses = []
    log_every = max(1, steps // 50)
    bar = Progress(steps, "sft", enabled=progress)
    for step in range(1, steps + 1):
        losses.append(sft_step(policy, optimizer, samples, min(batch_size, len(samples)), generator))
        bar.update(1)
        if log is not None and (step % log_every == 0 or step == steps):
            log(step, losses[-1])
    bar.close()
    return losses
