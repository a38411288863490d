"""Text environments: the info contract, scripted experts, the invalid-action policy, the language wrapper."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from rlft.envs import make_env, make_vector_env
from rlft.envs.language import LanguageWrapper, Verbalizer, make_language_env
from rlft.envs.text import InvalidActionPolicy, parse_choice
from rlft.envs.text_tasks import Calculator, EZPoints, GuessMyCity, GuessNumber, NumberLine, TextMaze, eval_arithmetic

INFO_KEYS = {"parsed_action", "invalid_action", "action_start", "action_end", "admissible_actions", "success",
             "messages"}
TASKS = ["numberline", "guess-number", "ezpoints", "text-maze", "guess-my-city", "calculator", "text-frozenlake",
         "text-cliffwalking", "text-taxi"]


def play_expert(env, seed: int) -> tuple[float, dict, int]:
    _, info = env.reset(seed=seed)
    total, turns, done = 0.0, 0, False
    while not done:
        _, reward, terminated, truncated, info = env.step(env.unwrapped.expert_action())
        total, turns, done = total + reward, turns + 1, terminated or truncated
    return total, info, turns


@pytest.mark.parametrize("task", TASKS)
def test_scripted_expert_solves_every_registered_text_task(task: str) -> None:
    env = make_env({"task": task})
    assert isinstance(env.observation_space, gym.spaces.Text) and isinstance(env.action_space, gym.spaces.Text)
    for seed in range(5):
        _, info, _ = play_expert(env, seed)
        assert INFO_KEYS <= set(info)
        assert info["success"], f"{task} seed {seed}"
        assert not info["invalid_action"]
        assert info["messages"][-2]["role"] == "assistant" and info["messages"][-1]["role"] == "user"


def test_tasks_are_seeded_and_reach_the_target_optimally() -> None:
    env = NumberLine(size=5)
    first, _ = env.reset(seed=3)
    again, _ = env.reset(seed=3)
    assert first == again
    distance = abs(env.position - env.target)
    _, _, turns = play_expert(env, 3)
    assert turns == distance
    assert play_expert(GuessNumber(high=16), 0)[2] <= 5  # binary search
    assert play_expert(EZPoints(), 0)[0] == 10.0


def test_numberline_rewards_follow_rl4vlm() -> None:
    env = NumberLine(size=5)
    env.reset(seed=0)
    env.position, env.target = 2, 4
    assert env.step("+")[1] == 0.0  # closer
    assert env.step("-")[1] == -1.0  # farther
    assert env.step("+")[1] == 0.0
    _, reward, terminated, _, info = env.step("+")
    assert (reward, terminated, info["success"]) == (1.0, True, True)


def test_invalid_action_reprompt_keeps_state_and_gives_up_after_max_reprompts() -> None:
    env = NumberLine(invalid_action=InvalidActionPolicy("reprompt", max_reprompts=2, penalty=0.5))
    obs, _ = env.reset(seed=1)
    position = env.position
    for _ in range(2):
        text, reward, terminated, _, info = env.step("jump!")
        assert info["invalid_action"] and info["parsed_action"] is None and not terminated
        assert reward == -0.5 and env.position == position
        assert text.startswith("Invalid action. Legal actions: +, -.") and text.endswith(obs)
    _, _, terminated, _, _ = env.step("still no")
    assert terminated  # the third consecutive invalid reply ends the episode
    env.reset(seed=1)
    env.step("nope")
    env.step(env.expert_action())  # a valid reply resets the count
    _, _, terminated, _, _ = env.step("nope")
    assert not terminated


def test_invalid_action_penalty_and_default_modes() -> None:
    env = NumberLine(invalid_action=InvalidActionPolicy("penalty", penalty=2.0))
    env.reset(seed=2)
    position = env.position
    for _ in range(4):
        _, reward, terminated, _, info = env.step("??")
        assert reward == -2.0 and not terminated and info["invalid_action"]
    assert env.position == position
    env = NumberLine(invalid_action=InvalidActionPolicy("default"))
    env.reset(seed=2)
    env.position, env.target = 3, 5
    _, _, _, _, info = env.step("??")
    assert info["invalid_action"] and info["parsed_action"] == "+" and env.position == 4
    with pytest.raises(ValueError, match="mode"):
        InvalidActionPolicy("ignore")


def test_parsing_and_action_spans() -> None:
    assert parse_choice("Action: LEFT.", ["left", "right"]) == "left"
    assert parse_choice("I go right", ["left", "right"]) == "right"
    assert parse_choice("left or right?", ["left", "right"]) is None  # ambiguous
    assert parse_choice("-", ["+", "-"]) == "-"
    env = NumberLine()
    env.reset(seed=0)
    reply = "target is bigger, so\nAction: +"
    start, end = env.action_span(reply)
    assert reply[start:end] == "+"
    env.position, env.target = 1, 3
    _, _, _, _, info = env.step(reply)
    assert (info["action_start"], info["action_end"]) == (start, end)


def test_calculator_tool_call_and_verifiable_answer() -> None:
    env = Calculator()
    env.reset(seed=0)
    text, reward, terminated, _, _ = env.step(f"calculator: {env.question}")
    value = eval_arithmetic(env.question)
    assert str(value) in text and reward == 0.0 and not terminated
    _, reward, terminated, _, info = env.step(f"answer: {value + 1}")
    assert terminated and reward == 0.0 and not info["success"]
    with pytest.raises(ValueError):
        eval_arithmetic("__import__('os').system('true')")
    env.reset(seed=0)
    assert env.step("calculator: 2 ** 100")[4]["invalid_action"]  # not in the tool's grammar


def test_guess_my_city_oracle_answers_from_the_table() -> None:
    env = GuessMyCity()
    env.reset(seed=0)
    env.city = "Lisbon"
    text = env.step("Is it in Europe?")[0]
    assert "is it in europe? yes." in text
    assert "is it a capital? yes." in env.step("is it a capital?")[0]
    _, reward, terminated, _, _ = env.step("is it lisbon?")
    assert reward == 1.0 and terminated


def test_maze_walls_block_moves() -> None:
    env = TextMaze(cells=3)
    env.reset(seed=4)
    start = env.agent
    blocked = [m for m, (dr, dc) in env.MOVES.items() if env.grid[start[0] + dr][start[1] + dc] == "#"]
    assert blocked  # this seed starts next to a wall
    _, reward, terminated, _, info = env.step(blocked[0])
    assert env.agent == start and reward == 0.0 and not terminated and not info["invalid_action"]


def test_language_wrapper_checks_the_env_it_wraps() -> None:
    with pytest.raises(TypeError, match="Discrete"):
        LanguageWrapper(gym.make("Pendulum-v1"), Verbalizer("", ("a",), lambda o, e: "", lambda r, d: False))
    with pytest.raises(ValueError, match="action names"):
        LanguageWrapper(gym.make("FrozenLake-v1"), Verbalizer("", ("a", "b"), lambda o, e: "", lambda r, d: False))
    with pytest.raises(KeyError, match="no verbalizer"):
        make_language_env("MountainCar-v0")
    env = make_language_env("FrozenLake-v1", is_slippery=False)
    obs, _ = env.reset(seed=0)
    assert obs.splitlines()[0].startswith("P") and "H" in obs
    _, _, _, _, info = env.step("Action: down")
    assert info["parsed_action"] == "down"


def test_text_envs_run_in_gymnasium_vector_envs() -> None:
    vec = make_vector_env({"task": "numberline"}, 3)
    obs, _ = vec.reset(seed=[0, 1, 2])
    assert isinstance(obs, tuple) and all(isinstance(o, str) for o in obs)
    _, reward, _, _, info = vec.step(("+", "-", "what"))
    assert info["invalid_action"].tolist() == [False, False, True]
    assert reward.shape == (3,) and np.isfinite(reward).all()


def test_textarena_games_play_through_the_adapter() -> None:
    pytest.importorskip("textarena")
    env = make_env({"task": "textarena-guess-the-number"})
    obs, _ = env.reset(seed=0)
    assert "Guess The Number" in obs and "[5]" in obs
    low, high, info = 1, 20, {}
    done = False
    _, reward, _, _, info = env.step("I think so.")  # no bracketed move: rlft's invalid-action policy
    assert info["invalid_action"] and reward == 0.0
    while not done:  # binary search on the game's hints
        guess = (low + high) // 2
        text, reward, terminated, truncated, info = env.step(f"my guess: [{guess}]")
        done = terminated or truncated
        assert done or not text.startswith("my guess")  # the echo of our own move is dropped
        if "higher" in text:
            low = guess + 1
        elif "lower" in text:
            high = guess - 1
    assert info["success"] and reward > 0


def test_minigrid_speaks_through_the_language_wrapper() -> None:
    pytest.importorskip("minigrid")
    env = make_language_env("MiniGrid-Empty-5x5-v0")
    obs, _ = env.reset(seed=0)
    assert obs.startswith("mission: get to the green goal square") and "^" in obs
    info = {}
    for move in ("forward", "forward", "right", "forward", "forward"):  # start (1, 1) facing east; goal (3, 3)
        _, reward, terminated, _, info = env.step(f"Action: {move}")
    assert terminated and reward > 0 and info["success"]
