"""Task registry: the environments rlft knows by a short name, with their reference scores.

A *task* is a Gymnasium environment id plus what evaluation needs to turn a return
into a normalised score: ``100 * (return - ref_min) / (ref_max - ref_min)``.

For the MuJoCo locomotion tasks the reference returns are D4RL's (random policy and
the D4RL expert, Fu et al. 2020, ``d4rl/infos.py``), so that scores on our Gymnasium
v5 datasets can be read against the offline-RL literature. Datasets may carry their
own reference returns; those take precedence (see :mod:`rlft.offline.dataset`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rlft.common.suggest import did_you_mean


@dataclass(frozen=True)
class TaskSpec:
    """One registered task."""

    name: str  # short name used in configs and dataset ids, e.g. "hopper"
    env_id: str  # Gymnasium id passed to ``gymnasium.make``
    ref_min_score: float  # return of a uniformly random policy
    ref_max_score: float  # return of an expert policy
    max_episode_steps: int = 1000
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    sparse_reward: bool = False  # success-style reward (affects MC returns and plots)
    module: str | None = None  # package whose import registers env_id with gymnasium (e.g. gymnasium_robotics)
    action_repeat: int = 1  # each agent action is applied this many simulator steps (rewards summed)
    success_key: str | None = None  # info key of task success: the reward becomes 1 on success, which ends the episode
    entry_point: str | None = None  # "module:attr" of a user's env class or factory (env.task=module:attr), registered as env_id


class UnknownTaskError(KeyError, ValueError):
    """A task name that is neither registered nor a Gymnasium id; the message names the closest."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


_TASKS: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec, *, overwrite: bool = False) -> None:
    """Add a task to the registry. Re-registering a name needs ``overwrite=True``."""
    if spec.name in _TASKS and not overwrite:
        raise ValueError(f"task {spec.name!r} is already registered (pass overwrite=True to replace it)")
    _TASKS[spec.name] = spec


def get_task(name: str) -> TaskSpec:
    """Look a task up by its short name or its Gymnasium id."""
    if name in _TASKS:
        return _TASKS[name]
    for spec in _TASKS.values():
        if spec.env_id == name:
            return spec
    raise UnknownTaskError(f"unknown task {name!r}{did_you_mean(name, _TASKS)}; registered tasks: {sorted(_TASKS)}")


def list_tasks() -> list[str]:
    """Names of all registered tasks."""
    return sorted(_TASKS)


# D4RL reference returns (d4rl/infos.py, REF_MIN_SCORE / REF_MAX_SCORE of the v2 datasets).
register_task(TaskSpec("hopper", "Hopper-v5", ref_min_score=-20.272305, ref_max_score=3234.3))
register_task(TaskSpec("halfcheetah", "HalfCheetah-v5", ref_min_score=-280.178953, ref_max_score=12135.0))
register_task(TaskSpec("walker2d", "Walker2d-v5", ref_min_score=1.629008, ref_max_score=4592.3))
register_task(TaskSpec("ant", "Ant-v5", ref_min_score=-325.6, ref_max_score=3879.7))
# Cheap tasks for tests and smoke runs (ref returns: random policy vs. solved).
register_task(TaskSpec("pendulum", "Pendulum-v1", ref_min_score=-1230.0, ref_max_score=-150.0, max_episode_steps=200))
register_task(
    TaskSpec("inverted_pendulum", "InvertedPendulum-v5", ref_min_score=5.0, ref_max_score=1000.0)
)
# Sparse-reward navigation (Gymnasium-Robotics PointMaze, the D4RL maze2d successor) laid out
# like AntMaze-umaze: a fixed start at the bottom-left ("r") and goal at the top-left ("g") of
# the U, so the agent must go round. Reward 1 on reaching the goal, which ends the episode:
# the normalised score is the success rate in %. A random policy never succeeds. Actions repeat
# for 4 simulator steps (40 ms), so the 300-step limit is 75 decisions and a good route about
# 30: short enough for Q-values to propagate within CPU-sized offline budgets.
U_MAZE_FIXED_GOAL = [
    [1, 1, 1, 1, 1],
    [1, "g", 0, 0, 1],
    [1, 1, 1, 0, 1],
    [1, "r", 0, 0, 1],
    [1, 1, 1, 1, 1],
]
register_task(
    TaskSpec(
        "pointmaze_umaze",
        "PointMaze_UMaze-v3",
        ref_min_score=0.0,
        ref_max_score=1.0,
        max_episode_steps=300,
        env_kwargs={"continuing_task": False, "maze_map": U_MAZE_FIXED_GOAL},
        sparse_reward=True,
        module="gymnasium_robotics",
        action_repeat=4,
    )
)

# DeepMind Control Suite (rlft.envs.dm_control): flat state observations, rewards in [0, 1] per
# control step, 1,000-step episodes that end by time limit only. Actions repeat for 2 steps as in
# TD-MPC2 (500 decisions per episode); the references make the normalised score return / 10, the
# suite's usual 0-1000 scale.
DMC_TASKS = ("cartpole-balance", "cartpole-swingup", "reacher-easy", "walker-stand", "walker-walk", "cheetah-run",
             "finger-spin", "hopper-stand")
for _name in DMC_TASKS:
    _domain, _task = _name.split("-", 1)
    register_task(
        TaskSpec(
            f"dmc-{_name}",
            "rlft/DMC-v0",
            ref_min_score=0.0,
            ref_max_score=1000.0,
            max_episode_steps=1000,
            env_kwargs={"domain": _domain, "task": _task},
            module="rlft.envs.dm_control",
            action_repeat=2,
        )
    )

# Meta-World manipulation (rlft.envs.metaworld): state observations (39 dims), 4-D end-effector
# + gripper actions, sparse success reward (1 on success, which ends the episode), so the
# normalised score is the success rate in %. The scripted experts finish these in 40-80 steps;
# the 150-step limit leaves room for recoveries.
METAWORLD_TASKS = ("push", "door-open", "drawer-open", "button-press-topdown", "pick-place", "reach", "window-open")
for _name in METAWORLD_TASKS:
    register_task(
        TaskSpec(
            f"mw-{_name}",
            "rlft/MetaWorld-v3",
            ref_min_score=0.0,
            ref_max_score=1.0,
            max_episode_steps=150,
            env_kwargs={"env_name": f"{_name}-v3"},
            sparse_reward=True,
            module="rlft.envs.metaworld",
            success_key="success",
        )
    )

# OGBench manipulation, single-task versions (Park et al. 2025; PyPI ogbench, whose import registers
# them): a UR5e arm and cubes, state observations, 5-D actions, reward = cubes at their goal minus
# cubes (-2..0 for cube-double) before each action, the episode ends when every cube is at its goal
# (info["success"]: the success rate is the metric) or after 500 steps (cube-double; 200 for
# cube-single). The references make a normalised score of 0 the worst return and 100 a solve at once.
for _domain, _cubes, _steps in (("cube-single", 1, 200), ("cube-double", 2, 500)):
    for _task_id in range(1, 6):
        register_task(
            TaskSpec(
                f"{_domain}-task{_task_id}",
                f"{_domain}-singletask-task{_task_id}-v0",
                ref_min_score=-float(_cubes * _steps),
                ref_max_score=0.0,
                max_episode_steps=_steps,
                module="ogbench",
            )
        )

# Push-T (Chi et al. 2023, Diffusion Policy) through gym-pusht: a 2-D pymunk scene that renders
# fast on CPU. "pusht" observes a 64x64 RGB image and the agent position (flattened to
# [x, y, pixels...]); "pusht-state" the 5-D state. Actions are the agent's target position
# (rescaled to [-1, 1]); success is 95% overlap with the goal pose, rewarded sparsely.
for _name, _obs in (("pusht", {"obs_type": "pixels_agent_pos", "observation_width": 64, "observation_height": 64}),
                    ("pusht-state", {"obs_type": "state"})):
    register_task(
        TaskSpec(
            _name,
            "gym_pusht/PushT-v0",
            ref_min_score=0.0,
            ref_max_score=1.0,
            max_episode_steps=300,
            env_kwargs=_obs,
            sparse_reward=True,
            module="gym_pusht",
            success_key="is_success",
        )
    )

# Text tasks (rlft.envs.text_tasks, rlft.envs.language): text observations and actions, success
# reported in info["success"]. Returns mix task rewards and penalties, so the evaluator's success
# rate is the score to read; the references below make the normalised score the mean return
# relative to the task's success reward. Turn limits are the envs' own (max_turns).
for _name, _id, _success_reward, _turns, _kwargs in (
    ("numberline", "rlft/NumberLine-v0", 1.0, 10, {}),
    ("numberline-image", "rlft/NumberLineImage-v0", 1.0, 10, {}),
    ("guess-number", "rlft/GuessNumber-v0", 1.0, 6, {}),
    ("ezpoints", "rlft/EZPoints-v0", 10.0, 5, {}),
    ("text-maze", "rlft/TextMaze-v0", 1.0, 24, {}),
    ("guess-my-city", "rlft/GuessMyCity-v0", 1.0, 8, {}),
    ("calculator", "rlft/Calculator-v0", 1.0, 4, {}),
    ("text-frozenlake", "rlft/Text-FrozenLake-v1", 1.0, 20, {"is_slippery": False}),
    ("text-cliffwalking", "rlft/Text-CliffWalking-v1", float("nan"), 100, {}),
    ("text-taxi", "rlft/Text-Taxi-v4", float("nan"), 100, {}),
    ("text-blackjack", "rlft/Text-Blackjack-v1", 1.0, 100, {}),
    ("textarena-guess-the-number", "rlft/TextArena-v0", 1.0, 12, {"game": "GuessTheNumber-v0-raw"}),
):
    register_task(TaskSpec(_name, _id, ref_min_score=0.0, ref_max_score=_success_reward, max_episode_steps=_turns,
                           env_kwargs=_kwargs, sparse_reward=True, module="rlft.envs.text_registry"))

# VLA tasks (rlft.envs.vla): Push-T and BabyAI levels as image + instruction in, action tokens out,
# reward 1 on success; each generalisation split is a task of its own (vla-<scene>[-<split>]).
for _name, _id, _turns, _kwargs in (("pusht", "rlft/VLA-PushT-v0", 300, {}),
                                    ("babyai-gotoobj", "rlft/VLA-BabyAI-v0", 20, {"level": "BabyAI-GoToObj-v0"}),
                                    ("babyai-gotolocal", "rlft/VLA-BabyAI-v0", 20, {"level": "BabyAI-GoToLocal-v0"})):
    for _split in ("train", "semantic", "visual", "execution"):
        register_task(TaskSpec(f"vla-{_name}" + ("" if _split == "train" else f"-{_split}"), _id,
                               ref_min_score=0.0, ref_max_score=1.0, max_episode_steps=_turns,
                               env_kwargs={**_kwargs, "split": _split}, sparse_reward=True,
                               module="rlft.envs.text_registry"))
