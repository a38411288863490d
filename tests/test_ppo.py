"""PPO core and its policy families: GAE, DPPO's chain log-probabilities and clip schedule,
residual policies over a frozen base, and learning on a small task."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch.distributions import Normal

from rlft.agents.families import FamilyConfig, build_actor, build_base, wrap_env
from rlft.agents.ppo import PPO, PPOConfig, compute_gae
from rlft.envs import make_vector_env
from rlft.policies.diffusion import ChunkSpec, DiffusionPolicy
from rlft.policies.dppo import DPPOPolicy
from rlft.policies.encoders import ImageStateEncoder
from rlft.policies.gaussian import GaussianPPOPolicy
from rlft.policies.residual import ResidualVectorEnv
from rlft.runtime.evaluation import evaluate


class PointReach(gym.Env):
    """Move a point on a line to the origin: obs = position, action = velocity, reward = -|x|."""

    observation_space = gym.spaces.Box(-2.0, 2.0, (1,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.x = self.np_random.uniform(-1.5, 1.5)
        return np.array([self.x], np.float32), {}

    def step(self, action):
        self.x = float(np.clip(self.x + 0.25 * float(action[0]), -2.0, 2.0))
        return np.array([self.x], np.float32), -abs(self.x), False, False, {}


if "rlft-test/PointReach-v0" not in gym.registry:
    gym.register("rlft-test/PointReach-v0", entry_point=PointReach, max_episode_steps=20)


def test_gae_matches_discounted_returns_and_one_step_td():
    rewards = torch.tensor([[1.0], [2.0], [3.0]])
    values = torch.tensor([[0.5], [0.2], [0.1]])
    dones = torch.tensor([[0.0], [1.0], [0.0]])
    last = torch.tensor([4.0])
    adv, ret = compute_gae(rewards, values, dones, last, gamma=0.9, lam=1.0)
    # lambda = 1: returns are discounted sums that stop at the episode end and bootstrap at the rollout end
    torch.testing.assert_close(ret[:, 0], torch.tensor([1 + 0.9 * 2, 2.0, 3 + 0.9 * 4]))
    adv0, _ = compute_gae(rewards, values, dones, last, gamma=0.9, lam=0.0)
    torch.testing.assert_close(adv0[:, 0], torch.tensor([1 + 0.9 * 0.2 - 0.5, 2 - 0.2, 3 + 0.9 * 4 - 0.1]))
    torch.testing.assert_close(adv, ret - values)


def _dppo(ft_steps: int = 3, denoiser: str = "mlp") -> DPPOPolicy:
    torch.manual_seed(0)
    spec = ChunkSpec(obs_dim=3, action_dim=2, horizon=2, act_steps=2)
    base = DiffusionPolicy(spec, denoising_steps=6, hidden=(32, 32), denoiser=denoiser, unet_channels=(8, 16))
    return DPPOPolicy(base, ft_steps=ft_steps)


def test_dppo_chain_log_prob_is_the_sum_of_per_step_gaussians():
    policy = _dppo()
    obs = torch.randn(4, 3)
    _, chain, sampled = policy.sample_chain(obs)
    assert chain.shape == (4, 4, 4)  # x_{K'} and three fine-tuned steps, flat chunks of 2 x 2
    expected = torch.zeros(4)
    for i, k in enumerate(range(policy.ft_steps - 1, -1, -1)):  # one denoising step at a time
        kk = torch.full((4,), k)
        mean, logvar = policy.base.reverse_step(chain[:, i], kk, policy.base.encode(obs), policy.ft_network)
        std = (0.5 * logvar).exp().clamp(min=policy.min_logprob_std)
        expected += Normal(mean, std).log_prob(chain[:, i + 1]).sum(-1)
    torch.testing.assert_close(policy.chain_log_prob(obs, chain), expected)
    torch.testing.assert_close(sampled.sum(dim=(1, 2)), expected)  # captured while sampling


@pytest.mark.parametrize("denoiser", ["mlp", "unet"])
def test_dppo_recomputed_log_probs_equal_sampled_ones_and_only_the_copy_trains(denoiser):
    policy = _dppo(denoiser=denoiser)
    obs = torch.randn(5, 3)
    sample = policy.explore(obs)
    assert sample.env_action.shape == (5, 4) and sample.log_prob.shape == (5, 3)
    recomputed, entropy = policy.evaluate(obs, sample.stored)
    torch.testing.assert_close(recomputed, sample.log_prob)
    assert entropy is None
    trainable = {id(p) for p in policy.trainable_parameters()}
    assert trainable == {id(p) for p in policy.ft_network.parameters()}
    assert not any(p.requires_grad for p in policy.base.parameters())


def test_dppo_fine_tunes_a_copy_of_the_image_encoder_and_the_frozen_steps_keep_theirs():
    """DPPO's actor_ft deep-copies the whole actor, vision backbone included."""
    torch.manual_seed(0)
    spec = ChunkSpec(obs_dim=2 + 16 * 16 * 3, action_dim=2, horizon=2, act_steps=2)
    encoder = ImageStateEncoder((16, 16, 3), state_dim=2, features=8, channels=4)
    policy = DPPOPolicy(DiffusionPolicy(spec, denoising_steps=4, hidden=(16,), encoder=encoder), ft_steps=2)
    assert policy.ft_encoder is not policy.base.encoder
    trainable = {id(p) for p in policy.trainable_parameters()}
    assert {id(p) for p in policy.ft_encoder.parameters()} <= trainable
    assert not any(p.requires_grad for p in policy.base.parameters())
    obs = torch.rand(3, spec.obs_dim)
    sample = policy.explore(obs)
    torch.testing.assert_close(policy.evaluate(obs, sample.stored)[0], sample.log_prob)
    frozen = [p.detach().clone() for p in policy.base.encoder.parameters()]
    copied = [p.detach().clone() for p in policy.ft_encoder.parameters()]
    optimizer = torch.optim.SGD(policy.trainable_parameters(), lr=0.1)
    policy.evaluate(obs, sample.stored)[0].sum().backward()
    optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(frozen, policy.base.encoder.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(copied, policy.ft_encoder.parameters()))


def test_dppo_clip_schedule_and_denoising_discount():
    policy = _dppo(ft_steps=4)
    clip = policy.clip_coefficients()
    assert clip[0].item() == pytest.approx(policy.clip_coef_base) and clip[-1].item() == pytest.approx(policy.clip_coef)
    assert torch.all(clip[1:] > clip[:-1])
    torch.testing.assert_close(policy.advantage_weights(), torch.tensor([0.99**3, 0.99**2, 0.99, 1.0]))
    single = _dppo(ft_steps=1)  # the interpolation divides by K' - 1: one step must not
    torch.testing.assert_close(single.clip_coefficients(), torch.tensor([single.clip_coef]))
    with pytest.raises(ValueError, match="ft_steps"):
        DPPOPolicy(single.base, ft_steps=7)


def test_zero_residual_reproduces_the_base_policy_exactly():
    """Residual PPO's env with a zero residual executes exactly what the base policy does alone."""
    torch.manual_seed(0)
    base = GaussianPPOPolicy(1, 3, hidden=(16,))  # deterministic chunks of 3 actions
    cfg = FamilyConfig(family="residual", horizon=3, act_steps=3, residual_hidden=(16,))
    residual = build_actor(cfg, base, obs_dim=1, action_dim=1)
    torch.nn.init.zeros_(residual.net[-1].weight)
    plain = make_vector_env({"task": "rlft-test/PointReach-v0"}, 3, action_chunk=3)
    wrapped = wrap_env(cfg, make_vector_env({"task": "rlft-test/PointReach-v0"}, 3), base, "cpu")
    assert isinstance(wrapped, ResidualVectorEnv) and wrapped.single_observation_space.shape == (2,)
    act_base = lambda o: base.act(torch.as_tensor(o)).numpy()  # noqa: E731
    act_residual = lambda o: residual.act(torch.as_tensor(o)).numpy()  # noqa: E731
    a, b = evaluate(act_base, plain, 6, seed=5), evaluate(act_residual, wrapped, 6, seed=5)
    # same trajectories: returns agree to float rounding (a chunk's rewards are summed before the episode's)
    np.testing.assert_allclose(a.returns, b.returns, rtol=1e-12, atol=0)
    assert a.lengths == [7] * 6 and b.lengths == [20] * 6  # 20 steps: 7 chunks (the last one cut) or 20 residual steps


def test_residual_env_refills_chunks_and_adds_the_scaled_residual():
    torch.manual_seed(0)
    base = DiffusionPolicy(ChunkSpec(obs_dim=1, action_dim=1, horizon=4, act_steps=2), denoising_steps=4, hidden=(16,))
    env = ResidualVectorEnv(make_vector_env({"task": "rlft-test/PointReach-v0"}, 2), base, act_steps=2, scale=0.1)
    obs, _ = env.reset(seed=[0, 1])
    calls = []
    original = env._base_chunks
    env._base_chunks = lambda o: calls.append(len(o)) or original(o)
    np.testing.assert_array_equal(obs[:, 1], env.base_action()[:, 0])
    x0 = obs[:, 0].copy()
    env.step(np.full((2, 1), 2.0, np.float32))  # residual 2 * scale 0.1 = +0.2 on top of the base action
    expected = np.clip(x0 + 0.25 * np.clip(obs[:, 1] + 0.2, -1, 1), -2, 2)
    np.testing.assert_allclose(env.unwrapped.envs[0].unwrapped.x, expected[0], rtol=1e-6)
    assert calls == []  # the first chunk has a second action left
    env.step(np.zeros((2, 1), np.float32))
    assert calls == [2]  # both chunks used up: one batched base call


def test_a_fixed_std_residual_keeps_its_log_std_through_updates():
    """ResiP's released residual (learn_std false, init_logstd -1.0): PPO moves the mean, never the std."""
    torch.manual_seed(0)
    base = GaussianPPOPolicy(1, 1, hidden=(16,))
    cfg = FamilyConfig(family="residual", horizon=1, act_steps=1, residual_hidden=(16,), init_log_std=-1.0,
                       learn_std=False, residual_head_gain=1.0)
    residual = build_actor(cfg, base, obs_dim=1, action_dim=1)
    env = wrap_env(cfg, make_vector_env({"task": "rlft-test/PointReach-v0"}, 4), base, "cpu")
    ppo = PPO(residual, 2, PPOConfig(minibatch_size=40, update_epochs=2, critic_hidden=(16,), target_kl=None), 4)
    assert all(p is not residual.log_std for p in residual.trainable_parameters())
    head = residual.net[-1].weight.detach().clone()
    rollout, _ = ppo.collect(env, env.reset(seed=0)[0], 20)
    ppo.update(rollout)
    assert torch.equal(residual.log_std.detach(), torch.full((1,), -1.0))
    assert not torch.equal(residual.net[-1].weight, head)


@pytest.mark.parametrize("clip_critic", [True, False])
def test_max_grad_norm_clips_the_critic_too_unless_told_not_to(clip_critic):
    """DPPO clips actor_ft's gradient only; the other recipes clip actor and critic together."""
    torch.manual_seed(0)
    env = make_vector_env({"task": "rlft-test/PointReach-v0"}, 2)
    actor = GaussianPPOPolicy(1, 1, hidden=(8,))
    cfg = PPOConfig(minibatch_size=1000, update_epochs=1, critic_hidden=(8,), target_kl=None, max_grad_norm=1e-6,
                    clip_critic_grad=clip_critic, reward_scale_running=False)
    ppo = PPO(actor, 1, cfg, 2)
    ppo.update(ppo.collect(env, env.reset(seed=0)[0], 10)[0])
    norm = lambda params: torch.cat([p.grad.flatten() for p in params]).norm().item()  # noqa: E731
    actor_params, critic_params = actor.trainable_parameters(), list(ppo.critic.parameters())
    if clip_critic:
        assert norm(actor_params + critic_params) == pytest.approx(1e-6, rel=1e-3)
    else:
        assert norm(actor_params) == pytest.approx(1e-6, rel=1e-3) and norm(critic_params) > 1e-3


def test_running_observation_statistics_cover_every_collected_observation_and_freeze_outside_collection():
    """SB3's VecNormalize: mean and variance over all observations the rollouts saw, clipped to +-10."""
    torch.manual_seed(0)
    env = make_vector_env({"task": "rlft-test/PointReach-v0"}, 3)
    actor = GaussianPPOPolicy(1, 1, hidden=(8,))
    ppo = PPO(actor, 1, PPOConfig(obs_norm_running=True, critic_hidden=(8,), minibatch_size=30, target_kl=None), 3)
    seen = []
    obs, _ = env.reset(seed=0)
    original = env.step

    def recording_step(action):
        seen.append(np.asarray(ppo_obs[0]))
        out = original(action)
        ppo_obs[0] = out[0]
        return out

    ppo_obs = [obs]
    env.step = recording_step
    rollout, _ = ppo.collect(env, obs, 10)
    seen = np.concatenate(seen)
    np.testing.assert_allclose(ppo.obs_stats.mean, seen.mean(0), rtol=1e-3)
    np.testing.assert_allclose(ppo.obs_stats.var, seen.var(0), rtol=1e-3)
    expected = (seen - ppo.obs_stats.mean) / np.sqrt(ppo.obs_stats.var + 1e-8)
    np.testing.assert_allclose(ppo.normalize(seen), expected, rtol=1e-5)  # what the policy saw at the end
    assert np.abs(ppo.normalize(np.array([[1e6]]))).max() == 10.0
    before = ppo.obs_stats.state_dict()
    ppo.update(rollout)
    ppo.normalize(np.ones((5, 1)))
    assert torch.equal(ppo.obs_stats.state_dict()["mean"], before["mean"])  # frozen outside collect
    restored = PPO(actor, 1, ppo.cfg, 3)
    restored.load_state_dict(ppo.state_dict())
    np.testing.assert_array_equal(restored.normalize(seen), ppo.normalize(seen))


def test_gaussian_ppo_learns_point_reach():
    """PPO from scratch beats the initial policy clearly on a 20-step task within a few iterations."""
    torch.manual_seed(0)
    env = make_vector_env({"task": "rlft-test/PointReach-v0"}, 8)
    eval_env = make_vector_env({"task": "rlft-test/PointReach-v0"}, 8)
    actor = GaussianPPOPolicy(1, 1, hidden=(32, 32), init_log_std=-0.5)
    ppo = PPO(
        actor,
        1,
        PPOConfig(
            actor_lr=3e-3,
            critic_lr=3e-3,
            minibatch_size=64,
            update_epochs=5,
            critic_hidden=(32, 32),
            target_kl=None,
            reward_scale_running=False,
            gamma=0.9,
        ),
        8,
    )
    act = lambda o: actor.act(torch.as_tensor(o)).numpy()  # noqa: E731
    before = evaluate(act, eval_env, 16, seed=100).return_mean
    for it in range(15):
        obs, _ = env.reset(seed=list(range(8 * it, 8 * it + 8)))
        rollout, _ = ppo.collect(env, obs, 20)
        metrics = ppo.update(rollout)
    after = evaluate(act, eval_env, 16, seed=100).return_mean
    assert rollout.env_steps == 160 and metrics["ppo/updates"] > 0
    assert after > before + 3.0 and after > -4.0, (before, after)


def test_family_config_validates():
    with pytest.raises(ValueError, match="unknown policy family"):
        FamilyConfig(family="flow")
    with pytest.raises(ValueError, match="horizon == act_steps"):
        FamilyConfig(family="gaussian", horizon=8, act_steps=4)
    assert isinstance(build_base(FamilyConfig(family="dppo", hidden=(8,)), 3, 2), DiffusionPolicy)


@pytest.mark.parametrize("family", ["gaussian", "dppo"])
def test_bfloat16_autocast_rollouts_and_updates_keep_float32_state(family):
    """``ppo.autocast: bfloat16``: actor and critic forwards run in bfloat16 (their log-probs differ
    from float32 ones), rollouts store float32 tensors, an update recomputes the log-probs a rollout
    recorded up to bfloat16 rounding, and the trained parameters stay float32."""
    from rlft.policies.precision import autocast

    torch.manual_seed(0)
    env = make_vector_env({"task": "rlft-test/PointReach-v0"}, 2)
    if family == "gaussian":
        actor = GaussianPPOPolicy(1, 1, hidden=(16,))
    else:
        spec = ChunkSpec(obs_dim=1, action_dim=1, horizon=1, act_steps=1)
        actor = DPPOPolicy(DiffusionPolicy(spec, denoising_steps=4, hidden=(16,)), ft_steps=2)
    ppo = PPO(actor, 1, PPOConfig(minibatch_size=16, update_epochs=1, critic_hidden=(16,), target_kl=None,
                                  autocast="bfloat16"), 2)
    rollout, _ = ppo.collect(env, env.reset(seed=0)[0], 16)
    assert rollout.log_probs.dtype == rollout.values.dtype == torch.float32
    assert all(v.dtype == torch.float32 for v in rollout.stored.values())
    obs, stored = rollout.obs.flatten(0, 1), {k: v.flatten(0, 1) for k, v in rollout.stored.items()}
    with torch.no_grad():
        with autocast("cpu", "bfloat16"):
            low = actor.evaluate(obs, stored)[0].float()
        exact = actor.evaluate(obs, stored)[0]
    assert not torch.equal(low, exact)
    torch.testing.assert_close(low, rollout.log_probs.flatten(0, 1), atol=0.05, rtol=0.0)
    metrics = ppo.update(rollout)
    assert np.isfinite(list(metrics.values())).all() and metrics["ppo/approx_kl"] < 1e-2
    assert all(p.dtype == torch.float32 for p in [*actor.trainable_parameters(), *ppo.critic.parameters()])
    with pytest.raises(ValueError, match="ppo.autocast must be one of"):
        PPOConfig(autocast="float16")
