"""Flow Q-learning: flow matching carries noise to the data's actions, the one-step policy
distils the flow and climbs Q, the targets move towards the pre-update critics, and neither the
distillation nor the Q term trains the flow or the critics."""

from __future__ import annotations

import torch

from rlft.agents.fql import FQL, FQLConfig
from rlft.agents.replay_buffer import Batch
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
