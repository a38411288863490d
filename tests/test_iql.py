"""IQL: the expectile loss, and a policy that beats random from the shipped hopper-weak data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rlft.agents.replay_buffer import ReplayBuffer
from rlft.envs.factory import make_vector_env
from rlft.agents.iql import IQL, IQLConfig, expectile_loss
from rlft.offline.loaders import load_dataset
from rlft.runtime.evaluation import evaluate

from conftest import SHIPPED_HOPPER_WEAK


def test_expectile_loss_weights_positive_and_negative_errors_asymmetrically():
    diff = torch.tensor([2.0, -2.0])
    assert expectile_loss(diff, 0.7).item() == pytest.approx((0.7 * 4 + 0.3 * 4) / 2)
    assert expectile_loss(torch.tensor([1.0]), 0.9).item() == pytest.approx(0.9)
    assert expectile_loss(torch.tensor([-1.0]), 0.9).item() == pytest.approx(0.1)
    # the minimiser of the expectile loss over a constant is the tau-expectile: above the mean for tau > 0.5
    samples = torch.randn(4000)
    v = torch.zeros((), requires_grad=True)
    opt = torch.optim.Adam([v], lr=0.05)
    for _ in range(400):
        opt.zero_grad()
        expectile_loss(samples - v, 0.9).backward()
        opt.step()
    assert v.item() > samples.mean().item() + 0.5


def test_iql_beats_a_random_policy_on_shipped_hopper_weak():
    dataset = load_dataset(SHIPPED_HOPPER_WEAK)
    mean, std = dataset.observation_stats()
    buffer = ReplayBuffer(11, 3, len(dataset))
    buffer.load_dataset(dataset, mean, std)
    agent = IQL(11, 3, IQLConfig(hidden=(128, 128)))
    losses = []
    for _ in range(1000):
        losses.append(agent.update(buffer.sample(256))["actor_loss"])
    assert np.mean(losses[-100:]) < np.mean(losses[:100])  # the weighted BC loss falls
    envs = make_vector_env({"task": "hopper"}, 5, (mean, std))
    trained = evaluate(lambda o: agent.act(torch.as_tensor(o, dtype=torch.float32)).numpy(), envs, 5, 0,
                       dataset.ref_min_score, dataset.ref_max_score)
    rng = np.random.default_rng(0)
    random = evaluate(lambda o: rng.uniform(-1, 1, (len(o), 3)).astype(np.float32), envs, 5, 0,
                      dataset.ref_min_score, dataset.ref_max_score)
    assert trained.normalized_score > random.normalized_score + 5.0
