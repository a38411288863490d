"""An MLP policy for text envs: the non-language baseline that runs through the same wrappers.

The observation string's last ``width`` characters are one-hot encoded (left-padded), an MLP
scores a fixed list of action names, and the chosen name is the action text. It acts on any
:class:`rlft.envs.text.TextEnv` whose admissible actions form a fixed set (the language-wrapped
toy-text envs, NumberLine, the maze), and is evaluated by the same evaluator as an LLM policy.
"""

from __future__ import annotations

from typing import Sequence

import torch

from rlft.envs.text import CHARSET
from rlft.policies.mlp import mlp
from torch import nn

_INDEX = {ch: i + 1 for i, ch in enumerate(CHARSET)}  # 0: padding / unknown
CHAR_VOCAB = len(CHARSET) + 1


def char_indices(texts: Sequence[str], width: int) -> torch.Tensor:
    """``[B, width]``: the character ids (0: padding or unknown) of each text's last ``width``
    characters, left-padded."""
    index = torch.zeros((len(texts), width), dtype=torch.long)
    for row, text in enumerate(texts):
        tail = text[-width:]
        if tail:
            index[row, width - len(tail):] = torch.tensor([_INDEX.get(ch, 0) for ch in tail], dtype=torch.long)
    return index


def char_features(texts: Sequence[str], width: int) -> torch.Tensor:
    """``[B, width * CHAR_VOCAB]``: one-hot characters of each text's last ``width`` characters,
    left-padded (position-aware, so grids and numbers keep their layout)."""
    return nn.functional.one_hot(char_indices(texts, width), CHAR_VOCAB).flatten(1).float()


def char_hot_positions(texts: Sequence[str], width: int, offset: int = 0) -> torch.Tensor:
    """``[B, width]``: where the ones of :func:`char_features` are (``offset`` added), the sparse
    form that :meth:`rlft.policies.ensemble.EnsembleMLP.forward_one_hot` reads."""
    return char_indices(texts, width) + torch.arange(width) * CHAR_VOCAB + offset


class TextMLPPolicy(nn.Module):
    """Characters in, one of ``action_names`` out."""

    def __init__(self, action_names: Sequence[str], width: int = 64, hidden: Sequence[int] = (128, 128)):
        super().__init__()
        if not action_names:
            raise ValueError("TextMLPPolicy needs at least one action name")
        self.action_names = list(action_names)
        self.width = width
        self.net = mlp(width * CHAR_VOCAB, len(self.action_names), hidden)

    def forward(self, observations: Sequence[str]) -> torch.Tensor:
        """``[B, len(action_names)]`` logits."""
        return self.net(char_features(observations, self.width))

    @torch.no_grad()
    def act(self, observations: Sequence[str], deterministic: bool = True) -> tuple[str, ...]:
        """Action names for a batch of observations (the evaluator's ``act``)."""
        logits = self(observations)
        if deterministic:
            choice = logits.argmax(-1)
        else:
            choice = torch.distributions.Categorical(logits=logits, validate_args=False).sample()
        return tuple(self.action_names[int(i)] for i in choice)
