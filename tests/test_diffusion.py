"""Diffusion policy: DDPM closed forms, behaviour cloning, action-chunk windows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rlft.agents.bc import BCConfig, ema_decay, train_bc
from rlft.offline.demos import chunk_windows
from rlft.policies.diffusion import ChunkSpec, DiffusionPolicy, NoiseSchedule
from conftest import episodes_to_dataset


def test_forward_process_matches_its_closed_form():
    """Running q(x_k | x_{k-1}) step by step gives N(sqrt(abar_k) x0, 1 - abar_k)."""
    sched = NoiseSchedule(10)
    x0 = torch.full((200_000,), 0.7)
    x = x0.clone()
    for k in range(10):
        beta = sched.betas[k]
        x = (1 - beta).sqrt() * x + beta.sqrt() * torch.randn_like(x)
        closed = sched.q_sample(x0[:1], torch.tensor([k]), torch.zeros(1))
        assert x.mean().item() == pytest.approx(closed.item(), abs=0.01)
        assert x.var().item() == pytest.approx(1 - sched.alphas_cumprod[k].item(), abs=0.01)
    assert sched.alphas_cumprod[-1] < 1e-3  # the cosine schedule ends at (almost) pure noise


def test_posterior_is_the_bayes_posterior():
    """q(x_{k-1} | x_k, x_0) from the schedule equals the product of prior and likelihood Gaussians."""
    sched = NoiseSchedule(20)
    x0, xk = torch.tensor([[0.3, -0.8]]), torch.tensor([[1.1, 0.2]])
    for k in (1, 5, 19):
        abar_prev, alpha = sched.alphas_cumprod[k - 1], 1 - sched.betas[k]
        prior_mean, prior_var = abar_prev.sqrt() * x0, 1 - abar_prev
        precision = 1 / prior_var + alpha / sched.betas[k]
        mean = (prior_mean / prior_var + alpha.sqrt() * xk / sched.betas[k]) / precision
        got_mean, got_logvar = sched.posterior(x0, xk, torch.tensor([k]))
        torch.testing.assert_close(got_mean, mean, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(got_logvar.exp(), (1 / precision).expand_as(mean), atol=1e-6, rtol=1e-4)


def test_predict_x0_inverts_the_forward_process():
    sched = NoiseSchedule(20)
    x0, noise, k = torch.randn(8, 3), torch.randn(8, 3), torch.randint(0, 20, (8,))
    torch.testing.assert_close(sched.predict_x0(sched.q_sample(x0, k, noise), k, noise), x0, atol=1e-4, rtol=1e-4)


def test_ddpm_and_ddim_samples_reproduce_a_cloned_mapping():
    """Behaviour cloning lowers the loss, and both samplers then return the demonstrated chunk."""
    torch.manual_seed(0)
    obs = torch.rand(512, 2) * 2 - 1
    chunks = torch.cat([0.8 * obs[:, :1], -0.5 * obs[:, 1:], obs.sum(1, keepdim=True).clamp(-1, 1) * 0.5], 1)
    policy = DiffusionPolicy(
        ChunkSpec(obs_dim=2, action_dim=3, horizon=1, act_steps=1), denoising_steps=10, hidden=(64, 64)
    )
    losses = train_bc(
        policy,
        obs.numpy(),
        chunks.numpy(),
        BCConfig(steps=1500, batch_size=128, lr=3e-3, log_every=250),
        progress=False,
    )
    assert losses[-1] < 0.3 * losses[0]
    test = torch.tensor([[0.5, -0.5], [-0.6, 0.2]])
    target = torch.cat([0.8 * test[:, :1], -0.5 * test[:, 1:], test.sum(1, keepdim=True).clamp(-1, 1) * 0.5], 1)
    assert (policy.act(test) - target).abs().max() < 0.15
    assert (policy.sample_ddim(test, steps=5) - target).abs().max() < 0.15


def test_chunk_windows_pad_at_episode_edges():
    episode = {
        "observations": np.arange(5, dtype=np.float32).reshape(5, 1),
        "actions": np.arange(4, dtype=np.float32).reshape(4, 1) * 10,
        "rewards": np.zeros(4),
        "terminations": np.array([0, 0, 0, 1], bool),
        "truncations": np.zeros(4, bool),
    }
    dataset = episodes_to_dataset([episode, episode])
    cond, chunks = chunk_windows(dataset, horizon=3, obs_history=2)
    assert cond.shape == (8, 2) and chunks.shape == (8, 3)
    np.testing.assert_array_equal(cond[0], [0, 0])  # history padded with the first observation
    np.testing.assert_array_equal(cond[2], [1, 2])
    np.testing.assert_array_equal(chunks[2], [20, 30, 30])  # chunk padded with the last action
    np.testing.assert_array_equal(chunks[4], [0, 10, 20])  # the second episode starts afresh
    with pytest.raises(ValueError, match="horizon"):
        chunk_windows(dataset, horizon=0)


def test_chunk_spec_rejects_inconsistent_shapes():
    with pytest.raises(ValueError, match="act_steps"):
        ChunkSpec(obs_dim=3, action_dim=2, horizon=2, act_steps=4)


def test_image_encoder_splits_state_pixels_and_passthrough():
    from rlft.policies.encoders import ImageStateEncoder

    encoder = ImageStateEncoder((16, 16, 3), state_dim=2, frames=2, features=8, extra_dim=3)
    obs = torch.rand(4, encoder.in_dim)
    out = encoder(obs)
    assert encoder.in_dim == 2 * (2 + 16 * 16 * 3) + 3 and out.shape == (4, 2 * (8 + 2) + 3)
    frame = 2 + 16 * 16 * 3
    torch.testing.assert_close(out[:, 8:10], obs[:, :2])  # first frame's state passes through
    torch.testing.assert_close(out[:, 18:20], obs[:, frame : frame + 2])  # second frame's state
    torch.testing.assert_close(out[:, -3:], obs[:, -3:])  # e.g. the residual policy's base action
    with pytest.raises(ValueError, match="expects"):
        encoder(obs[:, :-1])


def test_unet_denoiser_keeps_chunk_shapes_and_clones_a_mapping():
    from rlft.policies.denoisers import ConditionalUnet1D

    net = ConditionalUnet1D(cond_dim=3, action_dim=2, horizon=8, channels=(16, 32, 32), time_dim=8)
    out = net(torch.randn(5, 16), torch.randint(0, 10, (5,)), torch.randn(5, 3))
    assert out.shape == (5, 16)
    with pytest.raises(ValueError, match="divisible"):
        ConditionalUnet1D(cond_dim=3, action_dim=2, horizon=6, channels=(16, 32, 32))

    torch.manual_seed(0)
    obs = torch.rand(256, 1) * 2 - 1
    ramp = torch.linspace(0.2, 1.0, 4)
    chunks = obs * ramp  # a 4-step chunk of one action: x * (0.2 .. 1.0)
    policy = DiffusionPolicy(ChunkSpec(obs_dim=1, action_dim=1, horizon=4, act_steps=4), denoising_steps=10,
                             time_dim=8, denoiser="unet", unet_channels=(16, 32))
    losses = train_bc(policy, obs.numpy(), chunks.numpy(), BCConfig(steps=600, batch_size=64, lr=3e-3, log_every=100),
                      progress=False)
    assert losses[-1] < 0.5 * losses[0]
    test = torch.tensor([[0.8], [-0.5]])
    assert (policy.sample_ddim(test, steps=5) - test * ramp).abs().max() < 0.2


def test_cloning_leaves_the_moving_average_of_the_weights_in_the_policy():
    """Diffusion Policy's EMA warm-up: the average copies the weights for two steps, then decays by
    1 - (1 + t)^-0.75; training itself is the same with or without it."""
    assert ema_decay(1, 0.75, 0.9999) == ema_decay(2, 0.75, 0.9999) == 0.0
    assert ema_decay(3, 0.75, 0.9999) == pytest.approx(1 - 2 ** -0.75)
    assert ema_decay(10**9, 0.75, 0.9999) == 0.9999
    obs = np.random.default_rng(0).uniform(-1, 1, (64, 1)).astype(np.float32)
    chunks = np.concatenate([obs, -obs], axis=1)
    trajectory = []

    def clone(power):
        torch.manual_seed(0)
        policy = DiffusionPolicy(ChunkSpec(obs_dim=1, action_dim=1, horizon=2, act_steps=2), denoising_steps=4,
                                 hidden=(16,), time_dim=4)
        if power is None:  # record the weights before every step's loss
            loss = policy.bc_loss
            policy.bc_loss = lambda o, c: (trajectory.append([p.detach().clone() for p in policy.parameters()]),
                                           loss(o, c))[1]
        losses = train_bc(policy, obs, chunks, BCConfig(steps=6, batch_size=16, lr=1e-2, log_every=1, ema_power=power),
                          progress=False)
        return policy, losses

    last, plain_losses = clone(None)
    averaged, losses = clone(0.75)
    assert losses == plain_losses
    expected = [p.detach().clone() for p in last.parameters()]
    weights = trajectory[1:] + [expected]  # the weights after steps 1..6
    average = [w.clone() for w in weights[0]]
    for step, w in enumerate(weights, start=1):
        for a, x in zip(average, w):
            a.lerp_(x, 1 - ema_decay(step, 0.75, 0.9999))
    for a, p, x in zip(average, averaged.parameters(), expected):
        torch.testing.assert_close(p.detach(), a)
    assert any(not torch.equal(p, x) for p, x in zip(averaged.parameters(), expected))
