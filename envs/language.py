"""A language wrapper that turns any discrete-action gymnasium env into a :class:`TextEnv`.

A :class:`Verbalizer` says how one env speaks: its rules, its observation as text, the names of
its actions and when an episode counts as a success. Verbalizers for Gymnasium's toy-text envs
(FrozenLake, Taxi, CliffWalking, Blackjack) and for MiniGrid/BabyAI (the egocentric view as a
character grid, with the mission) are here; pass your own for other envs.
The wrapped env's scripted expert is the greedy policy of value iteration on the env's own
transition table (``env.unwrapped.P``) where it has one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from rlft.envs.text import InvalidActionPolicy, Outcome, TextEnv, parse_choice


@dataclass(frozen=True)
class Verbalizer:
    """How a discrete env is put into words."""

    instructions: str  # the system prompt
    action_names: tuple[str, ...]  # one name per discrete action, in index order
    describe: Callable[[Any, gym.Env], str]  # (observation, env) -> text
    success: Callable[[float, bool], bool]  # (reward, terminated) of the last step -> solved?
    expert: Callable[[Any, gym.Env], int] | None = None  # (observation, env) -> action index


class LanguageWrapper(TextEnv):
    """A discrete-action env as a text env: observations described, actions parsed by name."""

    def __init__(self, env: gym.Env, verbalizer: Verbalizer, max_turns: int = 100,
                 invalid_action: InvalidActionPolicy | None = None):
        if not isinstance(env.action_space, spaces.Discrete):
            raise TypeError(f"LanguageWrapper needs a Discrete action space, got {env.action_space}")
        if len(verbalizer.action_names) != env.action_space.n:
            raise ValueError(f"{len(verbalizer.action_names)} action names for {env.action_space.n} actions")
        super().__init__(max_turns, invalid_action)
        self.env = env
        self.verbalizer = verbalizer
        self.system_prompt = verbalizer.instructions
        self._obs: Any = None

    def _start(self) -> str:
        self._obs, _ = self.env.reset(seed=int(self.np_random.integers(2**31)))
        return self.verbalizer.describe(self._obs, self.env)

    def parse(self, utterance: str) -> str | None:
        return parse_choice(utterance, list(self.verbalizer.action_names))

    def admissible_actions(self) -> list[str]:
        return list(self.verbalizer.action_names)

    def _apply(self, action: str) -> Outcome:
        index = self.verbalizer.action_names.index(action)
        self._obs, reward, terminated, truncated, _ = self.env.step(index)
        success = self.verbalizer.success(float(reward), terminated)
        return Outcome(self.verbalizer.describe(self._obs, self.env), float(reward), terminated, success, truncated)

    def expert_action(self) -> str:
        if self.verbalizer.expert is None:
            return super().expert_action()
        return self.verbalizer.action_names[self.verbalizer.expert(self._obs, self.env)]

    def close(self) -> None:
        self.env.close()


def value_iteration_expert(gamma: float = 0.99, iterations: int = 500) -> Callable[[Any, gym.Env], int]:
    """Greedy action of value iteration on ``env.unwrapped.P`` (toy-text transition tables)."""
    cache: dict[int, np.ndarray] = {}

    def q_values(env: gym.Env) -> np.ndarray:
        model = env.unwrapped.P
        key = id(model)
        if key not in cache:
            n_states, n_actions = len(model), len(model[0])
            q = np.zeros((n_states, n_actions))
            for _ in range(iterations):
                v = q.max(axis=1)
                q = np.array([[sum(p * (r + gamma * v[s2] * (not done)) for p, s2, r, done in model[s][a])
                               for a in range(n_actions)] for s in range(n_states)])
            cache[key] = q
        return cache[key]

    return lambda obs, env: int(np.argmax(q_values(env)[int(obs)]))


def _grid_text(rows: int, cols: int, position: tuple[int, int], cells: Callable[[int, int], str]) -> str:
    grid = "\n".join("".join("P" if (r, c) == position else cells(r, c) for c in range(cols)) for r in range(rows))
    return f"{grid}\nyou are at row {position[0]}, column {position[1]}"


def _frozen_lake(obs: Any, env: gym.Env) -> str:
    desc = env.unwrapped.desc
    rows, cols = desc.shape
    return _grid_text(rows, cols, divmod(int(obs), cols), lambda r, c: desc[r, c].decode())


def _cliff_walking(obs: Any, env: gym.Env) -> str:
    rows, cols = env.unwrapped.shape

    def cell(r: int, c: int) -> str:
        if r == rows - 1:
            return "S" if c == 0 else "G" if c == cols - 1 else "C"
        return "."

    return _grid_text(rows, cols, divmod(int(obs), cols), cell)


TAXI_STOPS = "RGYB"


def _taxi(obs: Any, env: gym.Env) -> str:
    row, col, passenger, destination = env.unwrapped.decode(int(obs))
    where = "in taxi" if passenger == 4 else f"at {TAXI_STOPS[passenger]} {env.unwrapped.locs[passenger]}"
    return (f"taxi at ({row}, {col}), passenger {where}, "
            f"destination {TAXI_STOPS[destination]} {env.unwrapped.locs[destination]}")


def _blackjack(obs: Any, env: gym.Env) -> str:
    player, dealer, usable_ace = obs
    return f"your sum {player}, dealer shows {dealer}, usable ace {'yes' if usable_ace else 'no'}"


VERBALIZERS: dict[str, Verbalizer] = {
    "FrozenLake-v1": Verbalizer(
        "Walk on the frozen lake from S to G without falling into a hole H. P is you. "
        "Answer left, down, right or up.",
        ("left", "down", "right", "up"), _frozen_lake, lambda r, done: r > 0, value_iteration_expert()),
    "CliffWalking-v1": Verbalizer(
        "Walk from S to G; stepping on the cliff C sends you back to S. P is you. Answer up, right, down or left.",
        ("up", "right", "down", "left"), _cliff_walking, lambda r, done: done, value_iteration_expert()),
    "Taxi-v4": Verbalizer(
        "Drive the taxi (rows grow southwards) to the passenger, pick them up, and drop them off at the "
        "destination. Answer south, north, east, west, pickup or dropoff.",
        ("south", "north", "east", "west", "pickup", "dropoff"), _taxi, lambda r, done: done and r > 0,
        value_iteration_expert()),
    "Blackjack-v1": Verbalizer(
        "Play blackjack against the dealer: get closer to 21 without going over. Answer stick or hit.",
        ("stick", "hit"), _blackjack, lambda r, done: done and r > 0, lambda obs, env: int(obs[0] < 17)),
}


MINIGRID_CELLS = {"unseen": " ", "empty": ".", "wall": "#", "floor": "_", "door": "D", "key": "K", "ball": "B",
                  "box": "X", "goal": "G", "lava": "L", "agent": "A"}


def _minigrid(obs: Any, env: gym.Env) -> str:
    from minigrid.core.constants import IDX_TO_OBJECT

    view = obs["image"][:, :, 0]  # [x, y] object indices of the egocentric view; the agent is bottom-centre
    width, height = view.shape
    agent = (width // 2, height - 1)
    rows = ["".join("^" if (x, y) == agent else MINIGRID_CELLS[IDX_TO_OBJECT[int(view[x, y])]] for x in range(width))
            for y in range(height)]
    return f"mission: {obs['mission']}\n" + "\n".join(rows)


MINIGRID_VERBALIZER = Verbalizer(
    "You are ^ in a grid world, seeing the cells ahead of you (# wall, . floor, G goal, D door, K key, B ball, "
    "X box, L lava). Answer left, right, forward, pickup, drop, toggle or done.",
    ("left", "right", "forward", "pickup", "drop", "toggle", "done"), _minigrid, lambda r, done: r > 0)


def make_language_env(env_id: str, max_turns: int = 100, invalid_action: InvalidActionPolicy | None = None,
                      **env_kwargs: Any) -> LanguageWrapper:
    """``gymnasium.make(env_id, **env_kwargs)`` wrapped with its registered :class:`Verbalizer`;
    MiniGrid and BabyAI ids (``minigrid`` package) share one verbalizer of the egocentric view."""
    if env_id.startswith(("MiniGrid-", "BabyAI-")):
        import minigrid  # noqa: F401  registers the MiniGrid / BabyAI ids

        verbalizer = MINIGRID_VERBALIZER
    elif env_id in VERBALIZERS:
        verbalizer = VERBALIZERS[env_id]
    else:
        raise KeyError(f"no verbalizer for {env_id!r}; known: {sorted(VERBALIZERS)}, MiniGrid-*, BabyAI-* "
                       "(or wrap it yourself)")
    return LanguageWrapper(gym.make(env_id, **env_kwargs), verbalizer, max_turns, invalid_action)
