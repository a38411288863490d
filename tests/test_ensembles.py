"""Ensemble targets against member-by-member references; SAC / E2O pieces built on them."""

from __future__ import annotations

import itertools

import pytest
import torch

from rlft.agents.sac import SAC, SACConfig
from rlft.agents.replay_buffer import Batch
from rlft.policies.ensemble import PER_MEMBER_ROWS, CriticEnsemble, EnsembleMLP, per_member_wins, reduce_ensemble
from rlft.policies.gaussian import GaussianActor


@pytest.fixture
def q() -> torch.Tensor:
    return torch.randn(10, 64)


def test_min_and_mean_match_a_loop_over_members(q):
    members = [q[i] for i in range(q.shape[0])]
    expected_min = members[0]
    for m in members[1:]:
        expected_min = torch.minimum(expected_min, m)
    torch.testing.assert_close(reduce_ensemble(q, "min"), expected_min)
    torch.testing.assert_close(reduce_ensemble(q, "mean"), sum(members) / len(members))


def test_weighted_min_pair_is_the_mean_over_all_pairs(q):
    pairs = [torch.minimum(q[i], q[j]) for i, j in itertools.combinations(range(q.shape[0]), 2)]
    torch.testing.assert_close(reduce_ensemble(q, "weighted_min_pair"), torch.stack(pairs).mean(0))
    two = q[:2]
    torch.testing.assert_close(reduce_ensemble(two, "weighted_min_pair"), two.min(0).values)


def test_redq_is_the_min_over_one_random_subset(q):
    torch.manual_seed(3)
    got = reduce_ensemble(q, "redq", subset_size=2)
    torch.manual_seed(3)
    members = torch.randperm(10)[:2].tolist()
    torch.testing.assert_close(got, torch.minimum(q[members[0]], q[members[1]]))
    assert not torch.equal(got, q.min(0).values)  # a subset, not all ten
    with pytest.raises(ValueError, match="subset size"):
        reduce_ensemble(q, "redq", subset_size=11)
    with pytest.raises(ValueError, match="unknown target reduction"):
        reduce_ensemble(q, "median")


@pytest.mark.parametrize("reduction", ["min", "mean", "redq", "weighted_min_pair"])
def test_reduced_critic_runs_only_the_members_its_reduction_reads(reduction):
    critic = CriticEnsemble(3, 2, num_critics=10, hidden=(16,), layer_norm=True)
    obs, action = torch.randn(4, 5, 3), torch.rand(4, 5, 2)  # leading dims [B, n] as CQL's backup uses them
    torch.manual_seed(5)
    got = critic.reduced(obs, action, reduction)
    torch.manual_seed(5)
    torch.testing.assert_close(got, reduce_ensemble(critic(obs, action), reduction))
    assert got.shape == (4, 5)
    rows, layers = [], critic.net._layers
    critic.net._layers = lambda out, members, start: rows.append(out.shape[0]) or layers(out, members, start)
    critic.reduced(obs, action, reduction)
    assert rows == [2 if reduction == "redq" else 10]  # members entering the network: REDQ's pair, not all ten


def test_td3_actor_loss_reads_the_first_critic_alone():
    from rlft.agents.td3 import TD3, TD3Config

    agent = TD3(3, 2, TD3Config(hidden=(16,)))
    batch = Batch(torch.randn(8, 3), torch.rand(8, 2), torch.randn(8, 1), torch.randn(8, 3), torch.zeros(8, 1))
    loss, _ = agent.actor_loss(batch)
    expected = -agent.critic(batch.observations, agent.actor(batch.observations))[0].mean()
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize("squash", [True, False])
def test_gaussian_actor_log_prob_matches_its_samples(squash):
    actor = GaussianActor(4, 3, (32,), squash=squash, state_dependent_std=squash)
    obs = torch.randn(50, 4)
    actions, log_prob = actor.sample(obs)
    assert actions.abs().max() <= 1.0
    if squash:  # unclipped samples: the density of the returned action is the sampled one
        torch.testing.assert_close(actor.log_prob(obs, actions), log_prob, atol=2e-3, rtol=1e-3)
    else:
        inside = (actions.abs() < 1).all(-1)
        torch.testing.assert_close(actor.log_prob(obs, actions)[inside], log_prob[inside])


def test_sac_target_uses_the_configured_reduction():
    torch.manual_seed(0)
    agent = SAC(3, 2, SACConfig(hidden=(16,), num_critics=5, target_reduction="weighted_min_pair",
                                backup_entropy=False))
    batch = Batch(torch.randn(8, 3), torch.rand(8, 2), torch.randn(8, 1), torch.randn(8, 3), torch.zeros(8, 1))
    torch.manual_seed(1)
    target = agent.critic_target_values(batch)
    torch.manual_seed(1)
    next_actions, _ = agent.actor.sample(batch.next_observations)
    next_q = agent.critic_target(batch.next_observations, next_actions)
    expected = batch.rewards.squeeze(-1) + 0.99 * reduce_ensemble(next_q, "weighted_min_pair")
    torch.testing.assert_close(target, expected)


def test_e2o_ucb_exploration_picks_the_most_optimistic_candidate():
    torch.manual_seed(0)
    agent = SAC(3, 2, SACConfig(hidden=(16,), num_critics=4, exploration="ucb", ucb_candidates=6, ucb_lambda=2.0))
    obs = torch.randn(5, 3)
    torch.manual_seed(7)
    chosen = agent.act(obs, deterministic=False)
    torch.manual_seed(7)
    candidates = agent.actor.sample(obs.repeat_interleave(6, 0))[0].view(5, 6, 2)
    for i in range(5):
        q = agent.critic(obs[i].expand(6, 3), candidates[i])
        best = (q.mean(0) + 2.0 * q.std(0)).argmax()
        torch.testing.assert_close(chosen[i], candidates[i, best])


def test_online_overrides_switch_at_start_online_and_survive_checkpoints():
    cfg = SACConfig(hidden=(8,), num_critics=4, online_overrides={"target_reduction": "weighted_min_pair",
                                                                  "policy_freq": 4})
    agent = SAC(3, 2, cfg)
    assert agent.cfg.target_reduction == "min" and agent.cfg.policy_freq == 1
    agent.start_online()
    assert agent.cfg.target_reduction == "weighted_min_pair" and agent.cfg.policy_freq == 4
    restored = SAC(3, 2, cfg)
    restored.load_state_dict(agent.state_dict())
    assert restored.online and restored.cfg.policy_freq == 4
    with pytest.raises(ValueError, match="online_overrides has unknown"):
        SACConfig(online_overrides={"nope": 1})


@pytest.mark.parametrize("layer_norm", [False, True])
def test_one_hot_input_by_indices_equals_the_dense_input_in_values_and_gradients(layer_norm):
    torch.manual_seed(0)
    net = EnsembleMLP(40, 1, 2, (16, 16), layer_norm=layer_norm)
    hot = torch.stack([torch.randperm(40)[:5] for _ in range(8)])  # 5 ones per row
    dense = torch.zeros(8, 40).scatter_(1, hot, 1.0)
    expected = net(dense)
    grads = torch.autograd.grad(expected.square().sum(), list(net.parameters()))
    got = net.forward_one_hot(hot)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    for g, e in zip(torch.autograd.grad(got.square().sum(), list(net.parameters())), grads, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)
    members = torch.tensor([1])
    torch.testing.assert_close(net.forward_one_hot(hot, members), net(dense, members), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layer_norm", [False, True])
def test_per_member_and_batched_kernels_agree_in_values_and_gradients(layer_norm):
    """The CPU default (one addmm / fused layer_norm per member) and the batched kernel (one baddbmm
    per layer, for accelerators) are one function of the same parameters."""
    torch.manual_seed(0)
    net = EnsembleMLP(7, 3, 4, (32, 32), layer_norm=layer_norm)
    x = torch.randn(5, 6, 7)
    results = {}
    for kernel in ("batched", "per_member"):
        net.kernel = kernel
        out = net(x)
        results[kernel] = (out, net(x, torch.tensor([2, 0])),
                           torch.autograd.grad(out.square().sum(), list(net.parameters())))
    (out, sub, grads), (out_pm, sub_pm, grads_pm) = results["batched"], results["per_member"]
    assert out.shape == (4, 5, 6, 3)
    torch.testing.assert_close(out_pm, out, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sub_pm, sub, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sub, out[[2, 0]], rtol=1e-5, atol=1e-6)
    for g_pm, g in zip(grads_pm, grads, strict=True):
        torch.testing.assert_close(g_pm, g, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="unknown ensemble kernel 'fast'"):
        EnsembleMLP(7, 3, 4, kernel="fast")


def test_auto_kernel_runs_members_one_by_one_on_one_thread_or_large_batches():
    """``auto`` follows benchmarks/ensemble_kernel.md: per-member ops on a one-thread CPU, and on a
    multi-threaded CPU only for large batches; never off the CPU."""
    threads = torch.get_num_threads()
    small, large = torch.zeros(2, 256, 8), torch.zeros(2, PER_MEMBER_ROWS, 8)
    try:
        torch.set_num_threads(1)
        assert per_member_wins(small) and per_member_wins(large)
        torch.set_num_threads(2)
        assert not per_member_wins(small) and per_member_wins(large)
        assert not per_member_wins(torch.zeros(2, PER_MEMBER_ROWS, 8, device="meta"))
    finally:
        torch.set_num_threads(threads)
