"""Flow Q-learning: flow matching carries noise to the data's actions, the one-step policy
distils the flow and climbs Q, the targets move towards the pre-update critics, and neither the
distillation nor the Q term trains the flow or the critics; QC-FQL's action chunks: sampled up
to their episode's end, played through one chunk at a time, backed up only where complete."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rlft.agents.fql import FQL, FQLConfig
from rlft.agents.replay_buffer import Batch, ChunkBatch, ReplayBuffer
from rlft.offline.dataset import TransitionDataset
from rlft.policies.flow import VectorField, flow_actions, flow_matching_loss


def _batch(rows: int = 64, obs_dim: int = 3, action_dim: int = 2, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(rows, obs_dim, generator=g)
    actions = torch.tanh(obs[:, :action_dim])  # a deterministic behaviour policy: a = tanh(s[:2])
    return Batch(obs, actions, torch.randn(rows, 1, generator=g), torch.randn(rows, obs_dim, generator=g),
                 torch.zeros(rows, 1))


def test_flow_matching_learns_to_carry_noise_to_the_data_actions():
    torch.manual_seed(0)
    field = VectorField(3, 2, (64, 64), timed=True)
    optimizer = torch.optim.Adam(field.parameters(), lr=3e-3)
    batch = _batch(256)
    first = None
    for _ in range(400):
        loss = flow_matching_loss(field, batch.observations, batch.actions)
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.6 * first
    sampled = flow_actions(field, batch.observations, torch.randn_like(batch.actions), steps=10)
    assert not sampled.requires_grad and sampled.abs().max() <= 1.0
    error = (sampled - batch.actions).pow(2).mean().item()
    assert error < 0.1 * batch.actions.var().item() + 0.02  # deterministic data: the flow lands on it


def test_one_update_moves_targets_towards_the_pre_update_critics_and_trains_each_net_on_its_loss():
    torch.manual_seed(0)
    agent = FQL(3, 2, FQLConfig(hidden=(16, 16), flow_steps=3, tau=0.5))
    critic_before = [p.detach().clone() for p in agent.critic.parameters()]
    target_before = [p.detach().clone() for p in agent.critic_target.parameters()]
    info = agent.update(_batch())
    for target, old_target, old_critic, new_critic in zip(agent.critic_target.parameters(), target_before,
                                                          critic_before, agent.critic.parameters()):
        assert torch.allclose(target, 0.5 * old_target + 0.5 * old_critic)  # fql target_update: pre-update params
        assert not torch.equal(new_critic, old_critic)
    assert {"critic_loss", "actor_loss", "bc_flow_loss", "distill_loss", "q_loss"} <= set(info)

    # the actor loss: the one-step policy gets gradients, the critics none, and the flow exactly those
    # of its flow-matching term (the distillation target and the Q term send it nothing)
    batch = _batch(seed=1)
    for net in (agent.critic, agent.actor, agent.flow):
        net.zero_grad(set_to_none=True)
    agent.critic.requires_grad_(False)
    torch.manual_seed(7)
    loss, _ = agent.actor_loss(batch)
    loss.backward()
    agent.critic.requires_grad_(True)
    assert all(p.grad is None for p in agent.critic.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in agent.actor.parameters())
    flow_grads = [p.grad.clone() for p in agent.flow.parameters()]
    agent.flow.zero_grad()
    torch.manual_seed(7)
    flow_matching_loss(agent.flow, batch.observations, batch.actions).backward()
    assert all(torch.allclose(g, p.grad) for g, p in zip(flow_grads, agent.flow.parameters()))


def test_the_one_step_policy_learns_the_data_then_moves_towards_higher_q():
    torch.manual_seed(0)
    batch = _batch(256)
    agent = FQL(3, 2, FQLConfig(hidden=(64, 64), flow_steps=5, alpha=100.0, discount=0.0))
    batch = Batch(batch.observations, batch.actions, torch.zeros(256, 1), batch.next_observations, batch.dones)
    for _ in range(600):
        agent.update(batch)
    error = (agent.act(batch.observations) - batch.actions).pow(2).mean().item()
    assert error < 0.25 * batch.actions.var().item()  # all-zero rewards: the policy clones the data

    # data with actions independent of the state, rewarded by their first dimension: Q learns
    # Q(s, a) = a_0, and the policy leaves the data's mean (0) for larger a_0
    g = torch.Generator().manual_seed(1)
    actions = torch.rand(256, 2, generator=g) * 2 - 1
    rewarded = Batch(batch.observations, actions, actions[:, :1].clone(), batch.next_observations, batch.dones)
    greedy = FQL(3, 2, FQLConfig(hidden=(64, 64), flow_steps=5, alpha=1.0, discount=0.0))
    for _ in range(600):
        greedy.update(rewarded)
    assert greedy.act(batch.observations)[:, 0].mean().item() > 0.3


def test_chunks_stop_at_their_episodes_end_and_say_whether_they_can_be_backed_up():
    """Rows 0-4 end in a terminal, rows 5-9 are cut by a time limit (observation = row index,
    reward = row index); chunks of 3 with discount 0.5."""
    buffer = ReplayBuffer(1, 1, 10)
    rows = np.arange(10, dtype=np.float32)
    terminal = np.zeros(10, dtype=bool)
    terminal[4] = True
    timeouts = np.zeros(10, dtype=bool)
    timeouts[9] = True
    buffer.load_dataset(TransitionDataset(rows[:, None], rows[:, None] / 10, rows, terminal, timeouts, rows[:, None] + 1))
    torch.manual_seed(0)
    batch = buffer.sample_chunks(400, horizon=3, discount=0.5)
    for i in range(400):
        start = int(batch.observations[i, 0])
        episode_end = 4 if start <= 4 else 9
        taken = min(3, episode_end - start + 1)
        assert batch.action_valid[i].tolist() == [1.0] * taken + [0.0] * (3 - taken)
        # past the chunk's end: the stored rows that follow (start's own row past the data's end)
        assert batch.actions[i, :, 0].tolist() == pytest.approx([(start + k if start + k < 10 else start) / 10
                                                                 for k in range(3)])
        assert batch.rewards[i, 0].item() == pytest.approx(sum(0.5**k * (start + k) for k in range(taken)))
        assert batch.discounts[i, 0].item() == 0.5**taken and batch.next_observations[i, 0] == start + taken
        ends_in_terminal = start + taken - 1 == 4
        assert batch.dones[i, 0].item() == float(ends_in_terminal)
        assert batch.critic_valid[i, 0].item() == float(taken == 3 or ends_in_terminal)  # rows 8, 9: cut by time
    assert {int(o) for o in batch.observations[:, 0]} == set(range(10))


def test_a_chunked_policy_plays_each_chunk_through_then_draws_the_next():
    torch.manual_seed(0)
    agent = FQL(3, 2, FQLConfig(hidden=(8,), action_chunk=3))
    assert agent.chunk_length == 3 and agent.acts_with_state and agent.actor.net[-1].out_features == 6
    obs = torch.randn(2, 3)
    drawn = []
    original = agent._one_step
    agent._one_step = lambda o: drawn.append(len(o)) or original(o)
    first = [agent.act(obs, deterministic=False) for _ in range(3)]
    chunk = agent._chunks[False][0]
    assert all(torch.equal(a, chunk[:, k]) for k, a in enumerate(first)) and drawn == [2]
    agent.act(obs, deterministic=False)  # the chunk is played out: both envs draw a new one
    agent.act(obs, deterministic=True)  # evaluation keeps its own chunks
    agent.episodes_ended(np.array([True, False]), deterministic=False)
    agent.act(obs, deterministic=False)  # only the env that restarted draws
    assert drawn == [2, 2, 2, 1]
    agent.reset(2, deterministic=False)
    agent.act(obs, deterministic=False)
    assert drawn == [2, 2, 2, 1, 2]


def test_qc_fql_learns_from_chunks_with_the_critic_on_complete_ones_only():
    torch.manual_seed(0)
    buffer = ReplayBuffer(1, 1, 10)
    rows = np.arange(10, dtype=np.float32)
    ends = np.zeros(10, dtype=bool)
    ends[9] = True
    buffer.load_dataset(TransitionDataset(rows[:, None], np.zeros((10, 1), np.float32), rows, np.zeros(10, bool), ends,
                                          rows[:, None] + 1))
    batch = buffer.sample_chunks(64, horizon=3, discount=0.9)
    agent = FQL(1, 1, FQLConfig(hidden=(8,), action_chunk=3, flow_steps=2))
    loss, _ = agent.critic_loss(batch)
    invalid = batch.critic_valid[:, 0] == 0
    assert invalid.any()
    poisoned = ChunkBatch(**{**vars(batch), "rewards": torch.where(invalid[:, None], 1e6, batch.rewards)})
    assert agent.critic_loss(poisoned)[0].item() == pytest.approx(loss.item(), rel=1e-4)  # cut chunks weigh nothing
    info = agent.update(batch)
    assert np.isfinite(float(info["critic_loss"])) and np.isfinite(float(info["bc_flow_loss"]))
