"""iRe-VLA's alternation of RL and supervised learning (Guo et al. 2025, arXiv 2501.16664).

Rounds of two stages, repeated:

1. **RL with the backbone frozen** for ``rl_iterations`` iterations: PPO over turns
   (:class:`rlft.agents.text_pg.TextPolicyGradient`; ``configs/experiment/vla/ire/*`` set RL4VLA's values) trains only the
   action head and the value head. For a token-action VLA the action head is the output layer's
   rows of the action tokens; the other rows carry no gradient under constrained decoding anyway,
   and with tied input/output embeddings (the tiny models, SmolLM2) masking them also keeps the
   prompt's input embeddings frozen.
2. **Supervised learning of the whole model** (every weight that was trainable, LoRA adapters
   for a LoRA model) for ``sft_steps`` steps on the demonstrations plus every successful episode
   RL has collected so far.

The paper states the stages and their order; it releases no code, so the stage lengths and
learning rates here are rlft's (set in ``configs/experiment/vla/ire/*``), not the paper's.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from rlft.agents.optim import adam
from rlft.agents.text_pg import TextPGConfig, TextPolicyGradient
from rlft.agents.text_rollout import TextBatch
from rlft.agents.sft import sft_step
from rlft.policies.llm import Conversation, LLMPolicy
from rlft.common.typed_config import config_from_mapping


@dataclass
class IReVLAConfig:
    """Hyperparameters (``text_method.algorithm`` with ``algorithm: ire``)."""

    algorithm: str = "ire"
    rl: dict[str, Any] = field(default_factory=dict)  # the RL stage's TextPGConfig fields (PPO)
    rl_iterations: int = 5  # iterations of the RL stage per round
    sft_steps: int = 50  # gradient steps of the supervised stage per round
    sft_lr: float = 3e-4
    sft_batch_size: int = 32
    max_grad_norm: float = 1.0

    def __post_init__(self) -> None:
        if self.algorithm != "ire":
            raise ValueError(f"IReVLAConfig is for algorithm 'ire', got {self.algorithm!r}")
        if self.rl_iterations < 1 or self.sft_steps < 0:
            raise ValueError(f"rl_iterations must be >= 1 and sft_steps >= 0, got {self.rl_iterations}, {self.sft_steps}")

    def rl_config(self) -> TextPGConfig:
        return config_from_mapping(TextPGConfig, {"algorithm": "ppo", **self.rl}, "text_method.algorithm.rl")


class IReVLA:
    """RL on the heads, then SFT of the whole model on demonstrations and successes (module docstring)."""

    def __init__(self, policy: LLMPolicy, config: IReVLAConfig, action_ids: Sequence[int],
                 generator: torch.Generator | None = None):
        if policy.value_head is None:
            raise ValueError("iRe-VLA's RL stage is PPO: build the policy with a value head")
        self.policy, self.config = policy, config
        self.generator = generator or torch.Generator().manual_seed(0)
        self.whole = policy.trainable_parameters()  # what the supervised stage trains
        self.output = policy.model.get_output_embeddings().weight
        self.heads = [self.output, *policy.value_head.parameters()]
        rows = torch.zeros(self.output.shape[0], 1)
        rows[list(action_ids)] = 1.0
        self._rows = rows
        self._rl_stage = False
        self.output.register_hook(self._mask_rows)
        self.sft_optimizer = adam(self.whole, lr=config.sft_lr)
        with self._frozen_backbone():
            self.rl = TextPolicyGradient(policy, config.rl_config(), self.generator)
        self.demonstrations: list[Conversation] = []
        self.successes: list[Conversation] = []
        self.iterations = 0

    def _mask_rows(self, grad: torch.Tensor) -> torch.Tensor:
        """During RL only the action tokens' rows of the output layer learn."""
        return grad * self._rows.to(grad) if self._rl_stage else grad

    @contextmanager
    def _frozen_backbone(self) -> Iterator[None]:
        """The RL stage: only the heads (and of the output layer, the action rows) take gradients."""
        heads = {id(p) for p in self.heads}
        output_trained = self.output.requires_grad
        for p in self.whole:
            p.requires_grad_(id(p) in heads)
        self.output.requires_grad_(True)
        self._rl_stage = True
        try:
            yield
        finally:
            for p in self.whole:
                p.requires_grad_(True)
            self.output.requires_grad_(output_trained)
            self._rl_stage = False

    def update(self, batch: TextBatch) -> dict[str, float]:
        """One RL-stage iteration; after every ``rl_iterations`` of them, the supervised stage."""
        cfg = self.config
        with self._frozen_backbone():
            metrics = self.rl.update(batch)
        for episode in batch.episodes:
            if episode.success:
                self.successes.extend(batch.samples[s] for s in dict.fromkeys(batch.turns[t].sample
                                                                              for t in episode.turns))
        self.iterations += 1
        metrics["ire/successes"] = float(len(self.successes))
        data = self.demonstrations + self.successes
        if self.iterations % cfg.rl_iterations == 0 and data and cfg.sft_steps:
            losses = [sft_step(self.policy, self.sft_optimizer, data, min(cfg.sft_batch_size, len(data)),
                               self.generator, cfg.max_grad_norm) for _ in range(cfg.sft_steps)]
            metrics["ire/sft_loss"] = float(np.mean(losses))
        return metrics

    # ------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        return {"rl": self.rl.state_dict(), "sft_optimizer": self.sft_optimizer.state_dict(),
                "iterations": self.iterations, "demonstrations": [s.state() for s in self.demonstrations],
                "successes": [s.state() for s in self.successes]}

    def load_state_dict(self, state: dict) -> None:
        self.rl.load_state_dict(state["rl"])
        self.sft_optimizer.load_state_dict(state["sft_optimizer"])
        self.iterations = int(state["iterations"])
        self.demonstrations = [Conversation.from_state(s) for s in state["demonstrations"]]
        self.successes = [Conversation.from_state(s) for s in state["successes"]]
