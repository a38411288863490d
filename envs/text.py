"""Text environments: turn-based tasks whose observations and actions are strings.

Every text task is a :class:`TextEnv`: a ``gymnasium.Env`` with ``spaces.Text`` observations
and actions, so language policies run through the same vector envs, evaluator and logger as
robot policies. A turn is one ``step``: the policy's whole utterance is the action, the env
parses it (``parse``), applies the parsed action and answers with the next observation.

``info`` of every ``reset`` and ``step`` carries:

- ``parsed_action``: the canonical text of the action the env executed (``None`` if none),
- ``invalid_action``: whether the utterance failed to parse,
- ``action_start``/``action_end``: the characters of the action inside the utterance (the rest
  is reasoning; RL4VLM's log-prob scaling weighs the two apart), -1 when invalid,
- ``admissible_actions``: the canonical actions legal in the new state,
- ``success``: whether the task has been solved,
- ``messages``: the episode so far as chat messages (``system``/``user``/``assistant``).

What happens on an utterance that does not parse is an explicit :class:`InvalidActionPolicy`.
"""

from __future__ import annotations

import re
import string
from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from typing import Any, Literal, Mapping

import gymnasium as gym
from gymnasium import spaces

from rlft.common.typed_config import ConfigError, config_from_mapping

CHARSET = string.printable
MAX_TEXT = 4096


def text_space(max_length: int = MAX_TEXT) -> spaces.Text:
    """The observation/action space of text envs: printable ASCII strings."""
    return spaces.Text(max_length=max_length, min_length=0, charset=CHARSET)


@dataclass
class InvalidActionPolicy:
    """What a text env does when an utterance does not parse to a legal action.

    - ``reprompt``: the state is unchanged and the next observation repeats it with
      ``feedback``; after ``max_reprompts`` consecutive invalid utterances the episode ends.
    - ``penalty``: the state is unchanged, the turn is spent, and the episode goes on.
    - ``default``: the env's default action (:meth:`TextEnv.default_action`) is executed instead.

    ``penalty`` is subtracted from the reward of every invalid turn, whatever the mode.
    """

    mode: Literal["reprompt", "penalty", "default"] = "reprompt"
    max_reprompts: int = 2
    penalty: float = 0.0
    feedback: str = "Invalid action. Legal actions: {actions}."

    @classmethod
    def from_config(cls, value: "InvalidActionPolicy | Mapping[str, Any] | None",
                    default: "InvalidActionPolicy | None" = None) -> "InvalidActionPolicy":
        """The policy a config gives (``env_kwargs: {invalid_action: {mode: default}}`` in YAML, or
        ``'+text_task.env_cfg.env_kwargs.invalid_action={mode: penalty, penalty: 1}'`` on the
        command line), checked field by field (fields not given take this class's defaults);
        ``None``: ``default`` (else reprompt)."""
        if value is None:
            return default or cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            return config_from_mapping(cls, value, "invalid_action")
        raise ConfigError(f"invalid_action={value!r}: expected a mapping of {[f.name for f in fields(cls)]}")

    def __post_init__(self) -> None:
        if self.mode not in ("reprompt", "penalty", "default"):
            raise ValueError(f"invalid-action mode must be reprompt, penalty or default, got {self.mode!r}")
        if self.max_reprompts < 0:
            raise ValueError(f"max_reprompts must be >= 0, got {self.max_reprompts}")


@dataclass
class Outcome:
    """What applying one parsed action did."""

    observation: str
    reward: float
    terminated: bool
    success: bool = False
    truncated: bool = False  # the task itself ran out of time (a wrapped env's own limit)


class TextEnv(gym.Env[Any, str], ABC):
    """Base class of turn-based text tasks (see the module docstring for the ``info`` contract).

    Subclasses implement :meth:`_start` (new task, first observation), :meth:`parse` (utterance
    to canonical action or ``None``), :meth:`_apply` (canonical action to :class:`Outcome`) and
    :meth:`admissible_actions`; optionally :meth:`expert_action` (a scripted solver, used for
    transcripts and tests) and :meth:`default_action`.
    """

    metadata = {"render_modes": ["ansi"]}
    system_prompt: str = ""

    def __init__(self, max_turns: int, invalid_action: InvalidActionPolicy | None = None):
        if max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, got {max_turns}")
        self.max_turns = max_turns
        self.invalid_action = InvalidActionPolicy.from_config(invalid_action)
        self.observation_space = text_space()
        self.action_space = text_space()
        self.messages: list[dict[str, str]] = []
        self._turn = 0
        self._reprompts = 0
        self._success = False
        self._last_observation = ""

    # --- subclass hooks -------------------------------------------------------------------
    @abstractmethod
    def _start(self) -> str:
        """Draw a new task from ``self.np_random``; return the first observation."""

    @abstractmethod
    def parse(self, utterance: str) -> str | None:
        """The canonical action an utterance names, or ``None`` if it names no legal action."""

    @abstractmethod
    def _apply(self, action: str) -> Outcome:
        """Execute a canonical, legal action."""

    @abstractmethod
    def admissible_actions(self) -> list[str]:
        """Canonical actions legal in the current state."""

    def _observation(self, text: str) -> Any:
        """What ``reset``/``step`` return for an observation text (VLM tasks add an image)."""
        return text

    def default_action(self) -> str:
        """The action ``InvalidActionPolicy(mode="default")`` executes: the first admissible one."""
        return self.admissible_actions()[0]

    def expert_action(self) -> str:
        """A scripted solver's action in the current state."""
        raise NotImplementedError(f"{type(self).__name__} has no scripted expert")

    def expert_thought(self) -> str | None:
        """The scripted solver's reasoning before its action (``None``: the task has none); SFT
        transcripts with reasoning write it before an ``Action:`` line (RL4VLM's chain of thought)."""
        return None

    def action_span(self, utterance: str) -> tuple[int, int] | None:
        """Character span of the action inside an utterance (the rest is reasoning), if it parses.

        The default looks for the last ``Action: <x>`` line, else the whole stripped utterance.
        """
        match = _last_action_line(utterance)
        if match is not None:
            return match.span(1)
        stripped = utterance.strip()
        if not stripped:
            return None
        start = utterance.index(stripped)
        return start, start + len(stripped)

    # --- gymnasium API --------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        super().reset(seed=seed)
        self._turn = 0
        self._reprompts = 0
        self._success = False
        observation = self._start()
        self.messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        self.messages.append({"role": "user", "content": observation})
        self._last_observation = observation
        return self._observation(observation), self._info(None, False)

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        if not isinstance(action, str):
            raise TypeError(f"text envs take str actions, got {type(action).__name__}")
        self._turn += 1
        self.messages.append({"role": "assistant", "content": action})
        parsed = self.parse(action)
        invalid = parsed is None
        policy = self.invalid_action
        if invalid and policy.mode == "default":
            parsed = self.default_action()
        if parsed is not None:
            self._reprompts = 0
            outcome = self._apply(parsed)
            self._success = self._success or outcome.success
        else:
            self._reprompts += 1
            give_up = policy.mode == "reprompt" and self._reprompts > policy.max_reprompts
            feedback = policy.feedback.format(actions=", ".join(self.admissible_actions()))
            outcome = Outcome(f"{feedback}\n{self._last_observation}", 0.0, give_up)
        reward = outcome.reward - (policy.penalty if invalid else 0.0)
        truncated = not outcome.terminated and (outcome.truncated or self._turn >= self.max_turns)
        self._last_observation = outcome.observation if parsed is not None else self._last_observation
        self.messages.append({"role": "user", "content": outcome.observation})
        span = self.action_span(action) if not invalid else None
        info = self._info(parsed, invalid, span)
        return self._observation(outcome.observation), reward, outcome.terminated, truncated, info

    def render(self) -> str:
        return self._last_observation

    def _info(self, parsed: str | None, invalid: bool, span: tuple[int, int] | None = None) -> dict[str, Any]:
        return {
            "parsed_action": parsed,
            "invalid_action": invalid,
            "action_start": -1 if span is None else span[0],  # characters of the action in the utterance
            "action_end": -1 if span is None else span[1],
            "admissible_actions": self.admissible_actions(),
            "success": self._success,
            "messages": [dict(m) for m in self.messages],
        }


ACTION_LINE = re.compile(r"action\s*:\s*(.+?)\s*$", re.IGNORECASE | re.MULTILINE)


def _last_action_line(utterance: str) -> re.Match | None:
    matches = list(ACTION_LINE.finditer(utterance))
    return matches[-1] if matches else None


def parse_choice(utterance: str, choices: list[str]) -> str | None:
    """The one of ``choices`` an utterance names: after its last ``Action:``, or the whole
    utterance, compared case-insensitively; ``None`` if it names none (or several)."""
    match = _last_action_line(utterance)
    text = (match.group(1) if match is not None else utterance).strip().strip(".\"'`").lower()
    by_name = {c.lower(): c for c in choices}
    if text in by_name:
        return by_name[text]
    named = {c for c in choices if re.search(rf"(?<!\w){re.escape(c.lower())}(?!\w)", text)}
    return named.pop() if len(named) == 1 else None
