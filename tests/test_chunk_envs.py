"""Env layer for chunked and success-reward tasks: action chunks, observation history,
sparse success reward, Meta-World variations fixed by the reset seed."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from rlft.envs import make_env
from rlft.envs.wrappers import ActionChunking, SuccessReward


class Counter(gym.Env):
    """obs = step count; reward = action; terminates at step 5; info['done_it'] from step 3."""

    observation_space = gym.spaces.Box(0, 100, (1,), np.float32)
    action_space = gym.spaces.Box(-1, 1, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        self.t = 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.t += 1
        return np.array([self.t], np.float32), float(action[0]), self.t >= 5, False, {"done_it": self.t >= 3}


def test_action_chunking_sums_rewards_and_stops_at_the_episode_end():
    env = ActionChunking(Counter(), steps=3)
    assert env.action_space.shape == (3,)
    env.reset()
    obs, reward, terminated, _, info = env.step(np.array([0.1, 0.2, 0.3]))
    assert obs[0] == 3 and reward == pytest.approx(0.6) and not terminated and info["chunk_steps"] == 3
    obs, reward, terminated, _, info = env.step(np.array([1.0, 1.0, 1.0]))
    assert obs[0] == 5 and reward == pytest.approx(2.0) and terminated and info["chunk_steps"] == 2
    with pytest.raises(ValueError, match="steps >= 1"):
        ActionChunking(Counter(), steps=0)


def test_success_reward_is_sparse_and_ends_the_episode():
    env = SuccessReward(Counter(), key="done_it")
    env.reset()
    rewards = [env.step(np.array([0.7]))[1] for _ in range(2)]
    _, reward, terminated, _, info = env.step(np.array([0.7]))
    assert rewards == [0.0, 0.0] and reward == 1.0 and terminated and info["success"]
    with pytest.raises(KeyError, match="no 'missing' key"):
        missing = SuccessReward(Counter(), key="missing")
        missing.reset()
        missing.step(np.array([0.0]))


def test_observation_history_stacks_oldest_first():
    env = make_env({"task": "Pendulum-v1"}, obs_history=3)
    first, _ = env.reset(seed=0)
    assert first.shape == (9,)
    np.testing.assert_array_equal(first[:3], first[6:])  # padded with the first observation
    second, *_ = env.step(np.zeros(1, np.float32))
    np.testing.assert_array_equal(second[3:6], first[6:])
    assert not np.array_equal(second[6:], first[6:])


def test_metaworld_variation_is_a_function_of_the_reset_seed():
    env = make_env({"task": "mw-push"})
    a, _ = env.reset(seed=11)
    b, _ = env.reset(seed=12)
    c, _ = env.reset(seed=11)
    np.testing.assert_array_equal(a, c)
    assert not np.array_equal(a[36:], b[36:])  # another goal position
    _, reward, terminated, _, info = env.step(np.zeros(4, np.float32))
    assert reward == 0.0 and not terminated and info["success"] is False
    assert env.spec.max_episode_steps == 150


def test_pusht_scripted_pusher_succeeds_in_most_episodes():
    from rlft.offline.demos import make_expert

    env = make_env({"task": "pusht-state"})
    expert, on_reset = make_expert("pusht-state")
    successes = 0
    for seed in range(5):
        obs, _ = env.reset(seed=seed)
        on_reset()
        done = False
        while not done:
            obs, reward, terminated, truncated, info = env.step(expert(env, obs))
            done = terminated or truncated
        successes += int(info["success"])
        assert reward == float(info["success"])  # sparse: 1 exactly on the successful step
    assert successes >= 3
