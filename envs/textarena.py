"""TextArena single-player games as :class:`TextEnv` s (optional dependency ``textarena``).

TextArena games (``textarena.make("GuessTheNumber-v0-raw")``) run offline; this adapter plays
player 0, turns the game's message log into the observation text, and takes TextArena's own
verdicts: a reply without a bracketed move (``[...]``) is rlft's invalid action (the configured
:class:`InvalidActionPolicy` applies), a bracketed move the game rejects ends the episode as
TextArena decides, and the episode's reward is the game's reward for player 0 (success: > 0).
Use the ``-raw`` ids: the others wrap observations and actions for chat agents themselves.
"""

from __future__ import annotations

import re
from typing import Any

from rlft.envs.text import InvalidActionPolicy, Outcome, TextEnv

_MOVE = re.compile(r"\[[^\[\]]+\]")


class TextArenaEnv(TextEnv):
    """Player 0 of a single-player TextArena game."""

    def __init__(self, game: str = "GuessTheNumber-v0-raw", max_turns: int = 30,
                 invalid_action: InvalidActionPolicy | None = None):
        try:
            import textarena
        except ImportError as err:
            raise ImportError("TextArena games need the textarena package: pip install textarena") from err
        super().__init__(max_turns, invalid_action)
        self.game = game
        self.arena: Any = textarena.make(game)

    def _messages_text(self) -> str:
        """What the game said since the last observation (TextArena hands out new messages only),
        without the echo of our own move."""
        _, messages = self.arena.get_observation()
        return "\n".join(str(text) for sender, text, *_ in messages if sender != 0)

    def _start(self) -> str:
        self.arena.reset(num_players=1, seed=int(self.np_random.integers(2**31)))
        return self._messages_text()

    def parse(self, utterance: str) -> str | None:
        moves = _MOVE.findall(utterance)
        return moves[-1] if moves else None

    def action_span(self, utterance: str) -> tuple[int, int] | None:
        spans = [m.span() for m in _MOVE.finditer(utterance)]
        return spans[-1] if spans else None

    def admissible_actions(self) -> list[str]:
        return ["[<move>]"]

    def default_action(self) -> str:
        raise ValueError("TextArena games have no default move: use InvalidActionPolicy('reprompt' or 'penalty')")

    def _apply(self, action: str) -> Outcome:
        done, _ = self.arena.step(action=action)
        text = self._messages_text()
        if not done:
            return Outcome(text, 0.0, False)
        rewards, _ = self.arena.close()
        reward = float(rewards.get(0, 0.0)) if rewards else 0.0
        return Outcome(text, reward, True, reward > 0)
