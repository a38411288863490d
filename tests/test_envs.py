"""Env layer: registry, wrappers, factories and the evaluation protocol."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from rlft.envs import get_task, make_env, make_vector_env
from rlft.envs.wrappers import FixedNormalizeObservation
from rlft.runtime.evaluation import evaluate
from rlft.common.seeding import generator_state, set_generator_state


def test_registry_has_d4rl_reference_scores():
    hopper = get_task("hopper")
    assert hopper.env_id == "Hopper-v5"
    assert (hopper.ref_min_score, hopper.ref_max_score) == (-20.272305, 3234.3)
    assert get_task("Walker2d-v5").name == "walker2d"
    with pytest.raises(KeyError, match="unknown task 'nope'"):
        get_task("nope")


def test_action_rescale_maps_unit_box_to_env_bounds():
    env = make_env({"task": "pendulum"}, seed=0)
    assert np.allclose(env.action_space.low, -1) and np.allclose(env.action_space.high, 1)
    applied = []
    inner = env.unwrapped
    original = inner.step
    inner.step = lambda a: (applied.append(np.array(a)), original(a))[1]
    env.step(np.array([1.0], dtype=np.float32))
    env.step(np.array([-0.5], dtype=np.float32))
    np.testing.assert_allclose(np.concatenate(applied), [2.0, -1.0])  # Pendulum torque bound is 2


def test_fixed_normalisation_uses_given_stats_and_never_updates():
    mean, std = np.arange(11, dtype=np.float32), np.full(11, 2.0, dtype=np.float32)
    raw = make_env({"task": "hopper"})
    norm = make_env({"task": "hopper"}, obs_stats=(mean, std))
    raw_obs, _ = raw.reset(seed=5)
    norm_obs, _ = norm.reset(seed=5)
    np.testing.assert_allclose(norm_obs, (raw_obs - mean) / std, rtol=1e-6)
    for _ in range(20):
        a = np.zeros(3, dtype=np.float32)
        raw_obs, *_ = raw.step(a)
        norm_obs, *_ = norm.step(a)
    np.testing.assert_allclose(norm_obs, (raw_obs - mean) / std, rtol=1e-5)
    assert norm_obs.dtype == np.float32


def test_normalisation_rejects_wrong_shapes():
    with pytest.raises(ValueError, match=r"shapes \(3,\)/\(3,\) but observations have shape \(11,\)"):
        FixedNormalizeObservation(gym.make("Hopper-v5"), np.zeros(3), np.ones(3))


def test_episode_statistics_are_recorded():
    env = make_env({"task": "pendulum"}, seed=1)
    env.reset(seed=1)
    total, info = 0.0, {}
    for _ in range(200):
        _, r, term, trunc, info = env.step(np.zeros(1, dtype=np.float32))
        total += r
        if term or trunc:
            break
    assert info["episode"]["l"] == 200
    assert info["episode"]["r"] == pytest.approx(total)


def test_evaluation_is_seeded_and_independent_of_vectorisation():
    act = lambda obs: np.tanh(obs[:, :1]).astype(np.float32)  # noqa: E731  a fixed policy
    one = evaluate(act, make_vector_env({"task": "pendulum"}, 1), episodes=3, seed=7, ref_min_score=-1230, ref_max_score=-150)
    three = evaluate(act, make_vector_env({"task": "pendulum"}, 3), episodes=3, seed=7, ref_min_score=-1230, ref_max_score=-150)
    np.testing.assert_allclose(one.returns, three.returns)
    assert one.lengths == [200, 200, 200]
    expected = 100 * (np.mean(one.returns) + 1230) / (1230 - 150)
    assert one.normalized_score == pytest.approx(expected)
    other_seed = evaluate(act, make_vector_env({"task": "pendulum"}, 3), episodes=3, seed=8)
    assert not np.allclose(other_seed.returns, one.returns)
    assert np.isnan(other_seed.normalized_score)  # no reference scores given


def test_deepmind_control_tasks_are_seeded_flat_and_end_by_time_limit():
    env = make_env({"task": "dmc-cartpole-balance"})
    first, _ = env.reset(seed=5)
    assert first.shape == (5,) and first.dtype == np.float32
    assert np.array_equal(env.reset(seed=5)[0], first) and not np.array_equal(env.reset(seed=6)[0], first)
    state = generator_state(env.unwrapped.np_random)  # what an exact resume restores
    expected, _ = env.reset()
    set_generator_state(env.unwrapped.np_random, state)
    assert np.array_equal(env.reset()[0], expected)
    decisions, total = 0, 0.0
    while True:
        _, reward, terminated, truncated, _ = env.step(np.zeros(1, dtype=np.float32))
        decisions, total = decisions + 1, total + reward
        if terminated or truncated:
            break
    assert (decisions, terminated, truncated) == (500, False, True)  # 1000 control steps, action repeat 2
    assert 0 < total <= 1000
    with pytest.raises(KeyError, match="unknown DeepMind Control task cartpole-jump"):
        gym.make("rlft/DMC-v0", domain="cartpole", task="jump")
