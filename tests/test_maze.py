"""The sparse-reward maze task: waypoint controller, shipped dataset, and a learner beating random."""

from __future__ import annotations

import numpy as np
import pytest

from rlft.envs.factory import make_env, make_vector_env
from rlft.offline.loaders import load_dataset
from rlft.offline.maze_collection import MazeCollectionConfig, WaypointController, collect_maze
from rlft.offline.returns import returns_to_go
from rlft.runtime.evaluation import evaluate

from conftest import SHIPPED_MAZE


def test_flattened_goal_observation_and_bfs_path():
    env = make_env({"task": "pointmaze_umaze"})
    assert env.observation_space.shape == (8,)
    controller = WaypointController(env.unwrapped.maze)
    # UMaze: the two arms are joined only through the right column
    assert controller.path((1, 1), (3, 1)) == [(1, 1), (1, 2), (1, 3), (2, 3), (3, 3), (3, 2), (3, 1)]
    with pytest.raises(ValueError, match="no path"):
        controller.path((1, 1), (0, 0))


def test_noise_free_controller_reaches_the_goal_a_random_policy_rarely_does():
    env = make_env({"task": "pointmaze_umaze"})
    controller = WaypointController(env.unwrapped.maze)
    for seed in range(3):
        obs, _ = env.reset(seed=seed)
        for step in range(75):  # 300 simulator steps, 4 per action
            obs, reward, terminated, truncated, _ = env.step(controller(obs[4:6], obs[6:8], obs[2:4]))
            if terminated or truncated:
                break
        assert terminated and reward == 1.0 and step < 40
    rng = np.random.default_rng(0)
    envs = make_vector_env({"task": "pointmaze_umaze"}, 5)
    random = evaluate(lambda o: rng.uniform(-1, 1, (len(o), 2)).astype(np.float32), envs, 20, 0, 0.0, 1.0)
    assert random.normalized_score <= 10.0  # the fixed start is two turns away from the goal


def test_collection_writes_a_loadable_sparse_dataset(tmp_path):
    summary = collect_maze(MazeCollectionConfig(out_dir=str(tmp_path), transitions=2000, seed=1))
    dataset = load_dataset(summary["dataset"]["path"])
    assert len(dataset) == 2000 and dataset.obs_dim == 8
    assert set(np.unique(dataset.rewards)) <= {0.0, 1.0}
    assert dataset.terminals.sum() == dataset.rewards.sum()  # success ends the episode
    with pytest.raises(FileExistsError):
        collect_maze(MazeCollectionConfig(out_dir=str(tmp_path), transitions=10))


def test_shipped_maze_data_mixes_successes_and_failures():
    dataset = load_dataset(SHIPPED_MAZE)
    success = dataset.episode_returns() > 0
    assert 0.3 < success.mean() < 0.9  # sub-optimal: about 60% of episodes reach the goal
    mc = returns_to_go(dataset.rewards - 1.0, dataset.episode_ends, 0.99, sparse_fail_reward=-1.0)
    first = np.r_[0, dataset.episode_ends[:-1] + 1]
    np.testing.assert_allclose(mc[first[~success]], -100.0, rtol=1e-5)  # failures: -1 / (1 - gamma)
    assert np.all(mc[first[success]] > -100.0)
