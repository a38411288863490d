"""Actions as tokens: the action tokenizer of token-action VLAs (OpenVLA, RL4VLA).

A continuous action space is normalised to ``[-1, 1]`` per dimension and cut at ``bins`` evenly
spaced edges, OpenVLA's ``np.linspace(-1, 1, 256)`` (openvla ``prismatic/vla/action_tokenizer.py``,
which RL4VLA uses unchanged): ``bins - 1`` = 255 intervals, an action becomes one token per
dimension, the index of its interval, and a token decodes to the interval's centre. OpenVLA spends
256 token ids on them, two of which decode to the same (last) centre; rlft's ``bins - 1`` tokens are
the 255 distinct centres. rlft normalises from the env's own bounds where OpenVLA uses the
dataset's 1st and 99th percentiles (its ``bridge_orig`` statistics): rlft's choice, since its tasks'
bounds are known and its demonstrations few. A discrete space of ``n`` actions maps one action to
one token. ``chunk`` actions are decoded at once
(action chunking): a reply is ``chunk * dims`` tokens.

The tokens are ``<act_0>`` ... ``<act_{V-1}>``, added to the LM's vocabulary as whole tokens
(:func:`add_action_tokens`), so a reply's text re-encodes to exactly the sampled ids and
transcripts stay plain text. OpenVLA instead overwrites the 256 least-used ids of its Llama
vocabulary; new rows leave the pretrained vocabulary intact, and decoding is constrained to them
either way (:meth:`rlft.policies.llm.LLMPolicy.restrict_tokens`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import gymnasium as gym
import numpy as np

TOKEN_PATTERN = re.compile(r"<act_(\d+)>")


def action_token(index: int) -> str:
    """The text of action token ``index``."""
    return f"<act_{index}>"


@dataclass(frozen=True)
class ActionTokenizer:
    """Maps env actions to token indices and back (see the module docstring)."""

    vocabulary: int  # distinct action tokens: bins - 1 (Box) or actions (Discrete)
    dims: int  # tokens per action
    low: np.ndarray | None = None  # Box bounds (None: discrete)
    high: np.ndarray | None = None
    chunk: int = 1  # actions per reply

    @classmethod
    def for_space(cls, space: gym.Space, bins: int = 256, chunk: int = 1) -> "ActionTokenizer":
        """The tokenizer of a ``Discrete`` or bounded ``Box`` action space (``bins`` edges per Box dimension)."""
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        if isinstance(space, gym.spaces.Discrete):
            if space.start != 0:
                raise ValueError(f"a Discrete action space must start at 0, got start={space.start}")
            return cls(int(space.n), 1, chunk=chunk)
        if isinstance(space, gym.spaces.Box) and len(space.shape) == 1:
            low, high = space.low.astype(np.float64), space.high.astype(np.float64)
            if not (np.isfinite(low).all() and np.isfinite(high).all()) or (high <= low).any():
                raise ValueError(f"an action tokenizer needs finite bounds with low < high, got {low} .. {high}")
            if bins < 3:
                raise ValueError(f"bins (edges) must be >= 3, got {bins}")
            return cls(bins - 1, int(space.shape[0]), low, high, chunk)
        raise TypeError(f"no action tokenizer for {space} (Discrete or 1-D Box only)")

    @property
    def discrete(self) -> bool:
        return self.low is None

    @property
    def reply_length(self) -> int:
        """Tokens of one reply: ``chunk`` actions of ``dims`` tokens."""
        return self.chunk * self.dims

    @property
    def tokens(self) -> list[str]:
        """The text of every action token, in index order."""
        return [action_token(i) for i in range(self.vocabulary)]

    def encode(self, actions: np.ndarray | int) -> list[int]:
        """Token indices of ``chunk`` actions (``[chunk, dims]`` or ``[chunk]`` for discrete;
        one action without the chunk axis when ``chunk == 1``)."""
        if self.discrete:
            values = np.asarray(actions, dtype=np.int64).reshape(-1)
            if len(values) != self.chunk or (values < 0).any() or (values >= self.vocabulary).any():
                raise ValueError(f"expected {self.chunk} actions in [0, {self.vocabulary}), got {values.tolist()}")
            return values.tolist()
        values = np.asarray(actions, dtype=np.float64).reshape(self.chunk, self.dims)
        unit = (np.clip(values, self.low, self.high) - self.low) / (self.high - self.low)  # [0, 1]
        return np.clip(np.floor(unit * self.vocabulary), 0, self.vocabulary - 1).astype(np.int64).reshape(-1).tolist()

    def decode(self, indices: list[int]) -> np.ndarray:
        """``[chunk]`` discrete actions, or ``[chunk, dims]`` bin centres in the env's bounds."""
        values = np.asarray(indices, dtype=np.int64)
        if values.shape != (self.reply_length,) or (values < 0).any() or (values >= self.vocabulary).any():
            raise ValueError(f"expected {self.reply_length} token indices in [0, {self.vocabulary}), "
                             f"got {values.tolist()}")
        if self.discrete:
            return values
        centres = (values.reshape(self.chunk, self.dims) + 0.5) / self.vocabulary  # [0, 1]
        return self.low + centres * (self.high - self.low)

    def text(self, indices: list[int]) -> str:
        """A reply's text: its action tokens, concatenated."""
        return "".join(action_token(i) for i in indices)

    def parse(self, text: str) -> list[int] | None:
        """The token indices a reply consists of, or ``None`` unless it is exactly
        ``reply_length`` action tokens in range (surrounding whitespace allowed)."""
        body = text.strip()
        found = TOKEN_PATTERN.findall(body)
        if len(found) != self.reply_length or "".join(action_token(int(i)) for i in found) != body:
            return None
        indices = [int(i) for i in found]
        return indices if all(i < self.vocabulary for i in indices) else None


def add_action_tokens(tokenizer, model, count: int) -> list[int]:
    """Ids of ``<act_0>`` .. ``<act_{count-1}>`` in ``tokenizer``, adding the missing ones as whole
    tokens and, where the embeddings have no rows for them, growing ``model``'s embeddings (new rows
    start at the mean embedding, transformers' ``mean_resizing``); a vocabulary padded beyond the
    tokenizer (Qwen's, SmolVLM here) is never shrunk. A tokenizer saved after this loads back with
    the same ids."""
    names = [action_token(i) for i in range(count)]
    missing = [name for name in names if name not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens(missing)
        rows = model.get_input_embeddings().weight.shape[0]
        if len(tokenizer) > rows:  # a padded vocabulary (rows beyond the tokenizer's ids) already has room
            model.resize_token_embeddings(len(tokenizer))
    ids = tokenizer.convert_tokens_to_ids(names)
    for name, token_id in zip(names, ids):
        if tokenizer.encode(name, add_special_tokens=False) != [token_id]:
            raise ValueError(f"the tokenizer splits the action token {name!r}; it must encode to one id")
    return [int(i) for i in ids]
