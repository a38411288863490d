"""OGBench manipulation datasets generated here with the scripted oracles in ogbench's wheel.

OGBench (Park et al. 2025) ships its data as downloads; this machine cannot reach them, so rlft
generates them following ``data_gen_scripts/generate_manipspace.py`` (seohongpark/ogbench@1d41399,
``commands.sh``: ``--dataset_type=play``, noise 0.1, noise smoothing 0.5, 1,001-step episodes,
1,000 of them): the env in ``mode='data_collection'`` without goal termination, one
:class:`~ogbench.manipspace.oracles.plan.cube_plan.CubePlanOracle` (a keyframe plan with
temporally correlated noise) per subtask, a new target (``set_new_target``, stacking with
probability ``p ~ U(0, 0.25)`` per episode for cube-double) each time the oracle finishes, actions
clipped to ``[-1, 1]``. The reference does not seed; here numpy's global RNG (the oracles' and the
stacking draws) and each episode's reset are seeded from ``seed``.

The play data serve every task of the domain: :func:`collect_ogbench` relabels them with one
task's rewards as ``ogbench/relabel_utils.py`` does (a cube is at its goal within 4 cm; reward =
cubes at their goals minus cubes, taken at the state before the action, as the v1.2 envs'
``success_timing='pre'``) and ends an episode where every cube is at its goal (the single-task
env terminates there; the reference keeps the row with mask 0), so the written episodes are the
single-task MDP's. Only the cube domains are supported.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from rlft.envs.registry import TaskSpec, get_task
from rlft.offline.recording import prepare_output, write_minari_dataset

GOAL_TOLERANCE = 0.04  # ogbench relabel_utils: a cube is at its goal within 4 cm


@dataclass
class OGBenchCollectionConfig:
    """What to generate: play data of one cube domain, written once per task."""

    tasks: tuple[str, ...] = ("cube-double-task1",)  # rlft task names of one domain
    episodes: int = 100  # OGBench's datasets: 1,000 (1M transitions); rlft ships 100 (100k)
    episode_steps: int = 1001  # generate_manipspace.py max_episode_steps
    noise: float = 0.1
    noise_smoothing: float = 0.5
    out_dir: str = "data/minari"
    namespace: str = "rlft"
    version: int = 0
    seed: int = 0


def _domain(task: TaskSpec) -> str:
    """``cube-double`` for ``cube-double-singletask-task1-v0``."""
    return task.env_id.split("-singletask")[0]


def _stack_probability(domain: str, rng: np.random.RandomState) -> float:
    """generate_manipspace.py's per-episode stacking probability."""
    if "single" in domain:
        return 0.0
    if "double" in domain:
        return float(rng.uniform(0.0, 0.25))
    raise ValueError(f"{domain}: rlft generates OGBench data for cube-single and cube-double only")


def play_episodes(domain: str, episodes: int, episode_steps: int, noise: float, noise_smoothing: float,
                  seed: int) -> list[dict[str, np.ndarray]]:
    """``episodes`` play episodes: observations (one more than steps), actions and each step's
    ``qpos`` (the state before the action, ``info['prev_qpos']``)."""
    import gymnasium
    import ogbench  # noqa: F401  registers the manipspace envs
    from ogbench.manipspace.oracles.plan.cube_plan import CubePlanOracle

    env = gymnasium.make(f"{domain}-v0", terminate_at_goal=False, mode="data_collection",
                         max_episode_steps=episode_steps)
    oracles = {"cube": CubePlanOracle(env=env, noise=noise, noise_smoothing=noise_smoothing)}
    np.random.seed(seed)  # the oracles draw from numpy's global RNG
    out = []
    for index in tqdm(range(episodes), desc=f"{domain} play data"):
        ob, info = env.reset(seed=seed + index)
        p_stack = _stack_probability(domain, np.random)
        oracle = oracles[info["privileged/target_task"]]
        oracle.reset(ob, info)
        observations, actions, qpos = [ob], [], []
        done = False
        while not done:
            action = np.clip(np.asarray(oracle.select_action(ob, info)), -1.0, 1.0)
            ob, _, terminated, truncated, info = env.step(action)
            done = terminated or truncated
            if oracle.done:  # the subtask is over: a new target for the next one
                target_ob, target_info = env.unwrapped.set_new_target(p_stack=p_stack)
                oracle = oracles[target_info["privileged/target_task"]]
                oracle.reset(target_ob, target_info)
            observations.append(ob)
            actions.append(action)
            qpos.append(info["prev_qpos"])
        out.append({"observations": np.asarray(observations, dtype=np.float32),
                    "actions": np.asarray(actions, dtype=np.float32), "qpos": np.asarray(qpos)})
    env.close()
    return out


def task_goals(task: TaskSpec) -> np.ndarray:
    """The task's cube goal positions, ``[cubes, 3]``, read from its single-task env."""
    import gymnasium
    import ogbench  # noqa: F401

    env = gymnasium.make(task.env_id)
    env.reset(seed=0)  # a single-task env resets to its task (manipspace_env.py reset)
    goals = np.asarray(env.unwrapped.cur_task_info["goal_xyzs"], dtype=np.float64)
    env.close()
    return goals.reshape(-1, 3)


def relabel(episode: dict[str, np.ndarray], goals: np.ndarray) -> list[dict[str, np.ndarray]]:
    """One play episode as the single task's episodes: rewards ``cubes at goal - cubes`` at the
    state before each action, an episode ending (terminated) at each row where all cubes are at
    their goals, the rest cut (truncated) where the play episode ends."""
    cubes = len(goals)
    xyz = np.stack([episode["qpos"][:, 14 + 7 * i: 17 + 7 * i] for i in range(cubes)], axis=1)  # [T, cubes, 3]
    at_goal = np.linalg.norm(xyz - goals[None], axis=-1) <= GOAL_TOLERANCE
    rewards = at_goal.sum(-1).astype(np.float32) - cubes
    solved = at_goal.all(-1)
    ends = [*(np.flatnonzero(solved) + 1).tolist(), len(rewards)]
    pieces, start = [], 0
    for end in ends:
        if end <= start:
            continue
        terminated = np.zeros(end - start, dtype=bool)
        terminated[-1] = bool(solved[end - 1])
        truncated = np.zeros(end - start, dtype=bool)
        truncated[-1] = not terminated[-1]
        pieces.append({"observations": episode["observations"][start:end + 1],
                       "actions": episode["actions"][start:end], "rewards": rewards[start:end],
                       "terminations": terminated, "truncations": truncated})
        start = end
    return pieces


def collect_ogbench(cfg: OGBenchCollectionConfig) -> dict:
    """Generate the play data once and write one Minari dataset per task (``<namespace>/<task>/play-v<version>``)."""
    tasks = [get_task(name) for name in cfg.tasks]
    domains = {_domain(task) for task in tasks}
    if len(domains) != 1:
        raise ValueError(f"tasks {list(cfg.tasks)} come from domains {sorted(domains)}: generate one domain at a time")
    out_dir = Path(cfg.out_dir).resolve()
    ids = {task.name: f"{cfg.namespace}/{task.name}/play-v{cfg.version}" for task in tasks}
    prepare_output(out_dir, ids.values())
    started = time.time()
    domain = domains.pop()
    play = play_episodes(domain, cfg.episodes, cfg.episode_steps, cfg.noise, cfg.noise_smoothing, cfg.seed)
    summary: dict = {"domain": domain, "config": asdict(cfg), "datasets": {}}
    for task in tasks:
        goals = task_goals(task)
        episodes = [piece for episode in play for piece in relabel(episode, goals)]
        summary["datasets"][task.name] = write_minari_dataset(
            ids[task.name], episodes, task, out_dir, algorithm_name="OGBench CubePlanOracle (play)",
            description=(f"OGBench '{domain}-play' data generated by rlft.offline.ogbench_collection "
                         f"({cfg.episodes} episodes of {cfg.episode_steps} steps, seed {cfg.seed}; OGBench's own: "
                         f"1,000), relabelled for {task.env_id}."))
        summary["datasets"][task.name]["success_rows"] = int(sum(e["terminations"].sum() for e in episodes))
    summary["seconds"] = time.time() - started
    path = out_dir / cfg.namespace / f"{domain}-collection-v{cfg.version}.json"
    path.write_text(json.dumps(summary, indent=2))
    return summary
