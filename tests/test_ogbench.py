"""OGBench manipulation: play data generated with OGBench's oracles, relabelled with a task's
rewards into the single-task MDP's episodes, loaded as a task dataset, and a QC-FQL
offline-to-online run on the single-task env that records its success rate."""

from __future__ import annotations

import numpy as np
import pytest
from hydra import compose, initialize_config_module

from rlft.envs.registry import get_task
from rlft.offline.loaders import load_task_dataset
from rlft.offline.ogbench_collection import OGBenchCollectionConfig, collect_ogbench, relabel, task_goals
from rlft.runtime.experiment import Experiment


def _episode(cube_xyz: list[list[list[float]]]) -> dict[str, np.ndarray]:
    """A fake play episode whose cubes sit at ``cube_xyz[t]`` before step ``t``."""
    steps = len(cube_xyz)
    qpos = np.zeros((steps, 28))
    for t, cubes in enumerate(cube_xyz):
        for i, xyz in enumerate(cubes):
            qpos[t, 14 + 7 * i: 17 + 7 * i] = xyz
    return {"observations": np.arange(steps + 1, dtype=np.float32)[:, None].repeat(3, 1),
            "actions": np.zeros((steps, 5), np.float32), "qpos": qpos}


def test_relabelling_gives_the_tasks_rewards_and_ends_an_episode_where_every_cube_is_home():
    goals = np.array([[0.4, 0.0, 0.02], [0.4, 0.1, 0.02]])
    away, home0, home1 = [0.3, -0.2, 0.02], goals[0].tolist(), goals[1].tolist()
    near = [0.4, 0.13, 0.02]  # 3 cm from goal 1: within OGBench's 4 cm
    pieces = relabel(_episode([[away, away], [home0, away], [home0, near], [away, away], [home0, home1]]), goals)
    assert [p["rewards"].tolist() for p in pieces] == [[-2.0, -1.0, 0.0], [-2.0, 0.0]]
    assert [p["terminations"].tolist() for p in pieces] == [[False, False, True], [False, True]]
    assert not any(p["truncations"].any() for p in pieces)
    assert pieces[1]["observations"][:, 0].tolist() == [3, 4, 5]  # each piece keeps its next observations
    unsolved = relabel(_episode([[away, away], [home0, away]]), goals)
    assert len(unsolved) == 1 and unsolved[0]["truncations"].tolist() == [False, True]


def test_generated_play_data_load_as_each_tasks_dataset_and_fine_tune_online(tmp_path):
    summary = collect_ogbench(OGBenchCollectionConfig(tasks=("cube-double-task1", "cube-double-task2"), episodes=2,
                                                      episode_steps=60, out_dir=str(tmp_path)))
    assert set(summary["datasets"]) == {"cube-double-task1", "cube-double-task2"}
    assert task_goals(get_task("cube-double-task2")).tolist() == [[0.35, 0.1, 0.02], [0.5, 0.1, 0.02]]
    path = tmp_path / "rlft" / "cube-double-task1" / "play-v0"
    data = load_task_dataset(path, get_task("cube-double-task1"))
    assert len(data) == 120 and data.observations.shape[1] == 37 and data.actions.shape[1] == 5
    assert set(np.unique(data.rewards)) <= {-2.0, -1.0, 0.0} and np.abs(data.actions).max() <= 1.0
    collect_ogbench(OGBenchCollectionConfig(tasks=("cube-double-task2",), episodes=2, episode_steps=60,
                                            out_dir=str(tmp_path / "alone")))
    together, alone = (load_task_dataset(root / "rlft" / "cube-double-task2" / "play-v0", get_task("cube-double-task2"))
                       for root in (tmp_path, tmp_path / "alone"))
    assert np.array_equal(together.observations, alone.observations)  # seeded: one task's command, the same data
    assert np.array_equal(together.rewards, alone.rewards)
    with pytest.raises(FileExistsError, match="play-v0 exists"):
        collect_ogbench(OGBenchCollectionConfig(tasks=("cube-double-task1",), episodes=1, out_dir=str(tmp_path)))

    with initialize_config_module("rlft.configs", version_base="1.3"):
        cfg = compose("config", ["experiment=o2o/qc_fql/cube-double-task1", f"dataset.source={path}",
                                 "agent.hidden=[16,16]", "agent.flow_steps=2", "trainer.offline_steps=20",
                                 "trainer.online_steps=30", "trainer.warmup_steps=10", "trainer.eval_every=1000",
                                 "trainer.eval_episodes=2", "trainer.eval_envs=2", "env.max_episode_steps=20",
                                 "progress=false"])
    run = Experiment(cfg, tmp_path / "run")
    assert run.agent.chunk_length == 5  # QC-FQL: chunks of 5 actions
    results = run.run()
    assert run.agent.num_updates == 20 + (30 - 10)
    assert results["after"]["success_rate"] is not None and 0.0 <= results["after"]["success_rate"] <= 1.0
    assert results["after"]["lengths"] == [20, 20]  # unsolved: cut by the time limit
