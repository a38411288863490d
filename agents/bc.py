"""Behaviour cloning of chunked policies (diffusion or Gaussian) on the (observation history,
action chunk) pairs :func:`rlft.offline.demos.chunk_windows` cuts from a dataset.

:func:`train_bc` leaves an exponential moving average of the weights in the policy: DPPO
fine-tunes the average of its pretraining (``agent/pretrain/train_agent.py``, loaded by
``model/diffusion/diffusion.py``), and Diffusion Policy evaluates its EMA model. The decay
follows Diffusion Policy's warm-up schedule (``diffusion_policy/model/diffusion/ema_model.py``,
power 0.75 in its configs), updated every step (:func:`ema_decay`). DPPO's fixed decay 0.995
every 10 steps after 20 epochs suits its 10^5-step pretraining; the warm-up schedule averages
over a span that grows with the run, which suits budgets of a few thousand steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np
import torch

from rlft.agents.optim import adamw
from rlft.common.progress import Progress


class ChunkCloner(Protocol):
    """A policy trainable by :func:`train_bc`."""

    def bc_loss(self, obs: torch.Tensor, chunks: torch.Tensor) -> torch.Tensor: ...

    def parameters(self): ...


@dataclass
class BCConfig:
    """Behaviour-cloning budget (``bc:`` in configs)."""

    steps: int = 5000  # gradient steps
    batch_size: int = 256
    lr: float = 1e-4  # DPPO's pretraining learning rate
    weight_decay: float = 1e-6
    log_every: int = 500
    ema_power: float | None = 0.75  # Diffusion Policy's EMA warm-up; None: the last weights, no average
    ema_max_decay: float = 0.9999

    def __post_init__(self) -> None:
        if self.ema_power is not None and self.ema_power <= 0:
            raise ValueError(f"ema_power must be > 0 (or None for no moving average), got {self.ema_power}")
        if not 0.0 <= self.ema_max_decay < 1.0:
            raise ValueError(f"ema_max_decay must be in [0, 1), got {self.ema_max_decay}")


def ema_decay(step: int, power: float, max_decay: float) -> float:
    """Diffusion Policy's EMA decay after optimisation step ``step`` (1-based). Its ``get_decay``
    sees ``t = step - 2``: 0 while ``t <= 0`` (the average copies the weights), then
    ``min(1 - (1 + t)^-power, max_decay)``."""
    t = step - 2
    return 0.0 if t <= 0 else min(1.0 - (1.0 + t) ** -power, max_decay)


def train_bc(
    policy: ChunkCloner,
    cond: np.ndarray,
    chunks: np.ndarray,
    cfg: BCConfig,
    device: str | torch.device = "cpu",
    log: Callable[[int, dict[str, float]], None] | None = None,
    progress: bool = True,
) -> list[float]:
    """Minimise ``policy.bc_loss`` on random minibatches with AdamW and a cosine learning-rate
    decay, leaving the moving average of the weights in ``policy`` (``cfg.ema_power``); returns the
    mean loss of the trained weights over every ``log_every`` steps."""
    if len(cond) != len(chunks):
        raise ValueError(f"{len(cond)} conditions but {len(chunks)} chunks")
    cond_t = torch.as_tensor(cond, device=device)
    chunks_t = torch.as_tensor(chunks, device=device)
    optimizer = adamw(policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(cfg.steps, 1), eta_min=cfg.lr / 10)
    params = [p for p in policy.parameters() if p.requires_grad]
    average = [p.detach().clone() for p in params] if cfg.ema_power is not None else None
    history, running = [], 0.0
    bar = Progress(cfg.steps, "bc", enabled=progress)
    for step in range(1, cfg.steps + 1):
        idx = torch.randint(0, len(cond_t), (cfg.batch_size,), device=device)
        loss = policy.bc_loss(cond_t[idx], chunks_t[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if average is not None:
            with torch.no_grad():
                weight = 1.0 - ema_decay(step, cfg.ema_power, cfg.ema_max_decay)
                torch._foreach_lerp_(average, params, weight)
        running += loss.item()
        bar.update(1)
        if step % cfg.log_every == 0 or step == cfg.steps:
            count = cfg.log_every if step % cfg.log_every == 0 else step % cfg.log_every
            history.append(running / count)
            running = 0.0
            if log is not None:
                log(step, {"bc/loss": history[-1]})
    bar.close()
    if average is not None:
        with torch.no_grad():
            for p, a in zip(params, average):
                p.copy_(a)
    return history
