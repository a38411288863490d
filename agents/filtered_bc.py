"""Online filtered behaviour cloning of a language policy: ArCHer's baseline (Zhou et al. 2024,
arXiv 2402.19446, Sec. 6; YifeiZhou02/ArCHer ``archer/algorithms/offpolicy_train_loop.py`` and
``online_filteredbc/trainer.py``).

Every iteration's episodes join a buffer of all episodes so far; the episodes whose return
reaches the buffer's ``1 - top_fraction`` quantile (the released loop: the 90th percentile, ties
kept) are cloned: ``steps`` gradient steps of the supervised loss on the model tokens of
``batch_size`` sequences drawn from them. The released loop also withholds the first
``warmup_iter`` (20) updates from this baseline, which has no critic to warm up; so does rlft by
default. rlft's: the supervised loss is the token mean (``agents/sft.py``) where the released
``bc/core.py`` sums each reply's token log-probabilities (NumberLine's replies are one action token
and the end of turn).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from rlft.agents.optim import adam
from rlft.agents.text_rollout import TextBatch
from rlft.agents.sft import sft_step
from rlft.policies.llm import Conversation, LLMPolicy


@dataclass
class FilteredBCConfig:
    """Hyperparameters (``text_method.algorithm`` with ``algorithm: filtered_bc``)."""

    algorithm: str = "filtered_bc"
    lr: float = 1e-5  # default.yaml lm_lr (the same as ArCHer's actor)
    top_fraction: float = 0.1  # episodes at or above the (1 - top_fraction) return quantile are cloned
    steps: int = 3  # gradient steps per iteration (the released BCTrainer's epochs, actor_epochs 3)
    batch_size: int = 256  # sequences per step (the released 8 x 32 gradient-accumulation steps)
    warmup_updates: int = 20  # iterations that only collect (default.yaml warmup_iter)
    max_grad_norm: float = 1.0

    def __post_init__(self) -> None:
        if self.algorithm != "filtered_bc":
            raise ValueError(f"FilteredBCConfig is for algorithm 'filtered_bc', got {self.algorithm!r}")
        if not 0.0 < self.top_fraction <= 1.0:
            raise ValueError(f"top_fraction must be in (0, 1], got {self.top_fraction}")


class OnlineFilteredBC:
    """Clones the best episodes collected so far (see the module docstring)."""

    def __init__(self, policy: LLMPolicy, config: FilteredBCConfig, generator: torch.Generator | None = None):
        self.policy, self.config = policy, config
        self.generator = generator or torch.Generator().manual_seed(0)
        self.optimizer = adam(policy.trainable_parameters(), lr=config.lr)
        self.returns: list[float] = []  # every episode's return, in collection order
        self.sequences: list[list[Conversation]] = []  # the token sequences of each episode
        self.updates = 0

    def add(self, batch: TextBatch) -> None:
        for episode, episode_return in zip(batch.episodes, batch.episode_returns()):
            samples = dict.fromkeys(batch.turns[t].sample for t in episode.turns)
            self.returns.append(float(episode_return))
            self.sequences.append([batch.samples[s] for s in samples])

    def cutoff(self) -> float:
        """The return an episode needs to be cloned."""
        return float(np.quantile(self.returns, 1.0 - self.config.top_fraction))

    def update(self, batch: TextBatch) -> dict[str, float]:
        """Store the batch's episodes, then (after warm-up) clone the best episodes so far."""
        self.add(batch)
        cfg = self.config
        cutoff = self.cutoff()
        kept = [s for r, seqs in zip(self.returns, self.sequences) if r >= cutoff for s in seqs]
        metrics = {"cutoff_return": cutoff, "cloned_sequences": float(len(kept)), "buffer_episodes": float(len(self.returns))}
        self.updates += 1
        if self.updates <= cfg.warmup_updates:
            return metrics
        losses = [sft_step(self.policy, self.optimizer, kept, cfg.batch_size, self.generator, cfg.max_grad_norm)
                  for _ in range(cfg.steps)]
        return {**metrics, "bc_loss": float(np.mean(losses))}

    # ------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state(),
                "updates": self.updates, "returns": list(self.returns),
                "sequences": [[s.state() for s in seqs] for seqs in self.sequences]}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.updates = int(state["updates"])
        self.returns = [float(r) for r in state["returns"]]
        self.sequences = [[Conversation.from_state(s) for s in seqs] for seqs in state["sequences"]]
