"""Replay buffer: dataset loading, online ring, sampling, checkpoint state."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rlft.agents.replay_buffer import ReplayBuffer


def test_load_dataset_normalises_and_keeps_terminals(hopper_dataset):
    mean, std = hopper_dataset.observation_stats()
    buf = ReplayBuffer(11, 3, len(hopper_dataset) + 10, reward_scale=2.0, reward_bias=-1.0)
    buf.load_dataset(hopper_dataset, mean, std)
    assert len(buf) == buf.num_offline == len(hopper_dataset)
    np.testing.assert_allclose(buf.observations[: len(buf)].numpy(), (hopper_dataset.observations - mean) / std, rtol=1e-5)
    np.testing.assert_allclose(buf.rewards[: len(buf), 0].numpy(), 2.0 * hopper_dataset.rewards - 1.0, rtol=1e-5)
    assert buf.dones[: len(buf), 0].sum().item() == hopper_dataset.terminals.sum()


def test_online_ring_never_overwrites_offline_rows(hopper_dataset):
    n = len(hopper_dataset)
    buf = ReplayBuffer(11, 3, n + 5)
    buf.load_dataset(hopper_dataset)
    offline_copy = buf.observations[:n].clone()
    for i in range(12):
        buf.add(np.full(11, i, np.float32), np.zeros(3), np.float32(i), np.zeros(11), np.float32(0))
    assert len(buf) == n + 5 and buf.num_online == 5
    torch.testing.assert_close(buf.observations[:n], offline_copy)
    # the five online slots hold the five newest transitions (7..11)
    assert sorted(buf.rewards[n:, 0].tolist()) == [7.0, 8.0, 9.0, 10.0, 11.0]


def test_sampling_is_uniform_and_seeded(hopper_dataset):
    buf = ReplayBuffer(1, 1, 4)
    for i in range(4):
        buf.add(np.array([i]), np.array([0.0]), np.float32(i), np.array([0.0]), np.float32(0))
    torch.manual_seed(0)
    a = buf.sample(4000)
    counts = np.bincount(a.rewards[:, 0].long().numpy(), minlength=4)
    assert counts.min() > 850 and counts.max() < 1150
    torch.manual_seed(0)
    torch.testing.assert_close(buf.sample(4000).observations, a.observations)
    assert a.observations.shape == (4000, 1) and a.dones.shape == (4000, 1)


def test_online_state_round_trip(hopper_dataset):
    n = len(hopper_dataset)
    a = ReplayBuffer(11, 3, n + 50)
    a.load_dataset(hopper_dataset)
    for i in range(60):
        a.add(np.random.randn(11), np.random.randn(3), np.float32(i), np.random.randn(11), np.float32(i % 2))
    b = ReplayBuffer(11, 3, n + 50)
    b.load_dataset(hopper_dataset)
    b.load_online_state_dict(a.online_state_dict())
    for field in ReplayBuffer._FIELDS:
        torch.testing.assert_close(getattr(a, field), getattr(b, field))
    a.add(np.ones(11), np.ones(3), np.float32(99), np.ones(11), np.float32(0))
    b.add(np.ones(11), np.ones(3), np.float32(99), np.ones(11), np.float32(0))
    torch.testing.assert_close(a.rewards, b.rewards)


def test_errors_on_misuse(hopper_dataset):
    with pytest.raises(RuntimeError, match="empty"):
        ReplayBuffer(11, 3, 10).sample(2)
    with pytest.raises(ValueError, match="do not match the buffer"):
        ReplayBuffer(17, 6, 10_000).load_dataset(hopper_dataset)
    with pytest.raises(ValueError, match="do not fit"):
        ReplayBuffer(11, 3, 10).load_dataset(hopper_dataset)


def test_finished_only_sampling_skips_the_running_episode(hopper_dataset):
    buffer = ReplayBuffer(11, 3, len(hopper_dataset) + 20)
    buffer.load_dataset(hopper_dataset)
    first = buffer.add(np.zeros((5, 11)), np.zeros((5, 3)), np.ones(5), np.zeros((5, 11)), np.zeros(5))
    with pytest.raises(RuntimeError, match="no online episode has finished"):
        buffer.sample(8, offline_ratio=0.0, finished_only=True)
    buffer.end_episode(first, np.arange(5.0))
    buffer.add(np.zeros((3, 11)), np.zeros((3, 3)), np.ones(3), np.zeros((3, 11)), np.zeros(3))  # still running
    assert buffer.num_finished_online == 5
    torch.manual_seed(0)
    batch = buffer.sample(256, offline_ratio=0.0, finished_only=True)
    assert torch.isfinite(batch.mc_returns).all() and set(batch.mc_returns[:, 0].tolist()) == set(range(5))
    state = buffer.online_state_dict()
    restored = ReplayBuffer(11, 3, len(hopper_dataset) + 20)
    restored.load_dataset(hopper_dataset)
    restored.load_online_state_dict(state)
    assert restored.num_finished_online == 5


def test_finished_count_over_a_discarded_dataset_and_a_wrapping_ring(hopper_dataset):
    """Rows freed by ``discard_offline`` still hold the dataset's returns-to-go: writing over them
    must not count as losing finished online rows; a ring that wraps onto a finished episode must."""
    n = len(hopper_dataset)
    buffer = ReplayBuffer(11, 3, n + 8)
    buffer.load_dataset(hopper_dataset, mc_returns=np.ones(n, np.float32))
    buffer.discard_offline()
    first = buffer.add(np.zeros((3, 11)), np.zeros((3, 3)), np.ones(3), np.zeros((3, 11)), np.zeros(3))
    torch.testing.assert_close(first, torch.arange(3))
    buffer.end_episode(first, np.arange(3.0))
    assert buffer.num_finished_online == 3
    small = ReplayBuffer(11, 3, 4)
    episode = small.add(np.zeros((3, 11)), np.zeros((3, 3)), np.ones(3), np.zeros((3, 11)), np.zeros(3))
    small.end_episode(episode, np.arange(3.0))
    rows = small.add(np.zeros((2, 11)), np.zeros((2, 3)), np.ones(2), np.zeros((2, 11)), np.zeros(2))
    torch.testing.assert_close(rows, torch.tensor([3, 0]))  # the second row wraps onto the episode's first
    assert small.num_finished_online == 2 and len(small) == 4


def test_numpy_and_torch_writes_store_the_same_rows():
    """A CPU buffer writes through numpy views; other devices through torch indexing (forced here):
    both store the same values, also where the ring wraps."""
    views, indexed = ReplayBuffer(3, 2, 6, reward_scale=2.0), ReplayBuffer(3, 2, 6, reward_scale=2.0)
    indexed._host_views = None
    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 1, 2):
        step = (rng.standard_normal((n, 3)), rng.standard_normal((n, 2)), rng.standard_normal(n),
                rng.standard_normal((n, 3)), rng.random(n) < 0.5)
        assert torch.equal(views.add(*step, version=7), indexed.add(*step, version=7))
    assert len(views) == 6
    for field in ReplayBuffer._STORED:
        assert torch.equal(getattr(views, field), getattr(indexed, field)), field
