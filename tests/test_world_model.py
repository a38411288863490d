"""World models: discrete regression, TD-MPC2's latent rollout and losses, MPPI planning, FOWM's
uncertainty penalty, sequence sampling."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module
from omegaconf import DictConfig, OmegaConf

import rlft.configs
from rlft.agents.registry import build_agent
from rlft.agents.replay_buffer import Batch, ReplayBuffer
from rlft.agents.tdmpc2 import TDMPC2
from rlft.offline.dataset import DatasetError, TransitionDataset
from rlft.policies.base import Policy
from rlft.policies.planner import MPPIConfig, MPPIPlanner
from rlft.policies.two_hot import TwoHot
from rlft.policies.world_model import WorldModel, WorldModelConfig
from rlft.runtime.checkpoint import latest_checkpoint, load_checkpoint
from rlft.runtime.experiment import Experiment
from rlft.runtime.runner import all_finite

from conftest import run_interrupted

TINY_MODEL = {"latent_dim": 16, "enc_dim": 32, "mlp_dim": 32, "num_q": 3, "simnorm_dim": 4, "activation": "silu"}
TINY_PLANNER = {"iterations": 3, "num_samples": 64, "num_elites": 8, "num_pi_trajs": 8}


def tiny_agent(**options) -> TDMPC2:
    agent = build_agent("tdmpc2", {"model": TINY_MODEL, "planner": TINY_PLANNER, **options}, obs_dim=4, action_dim=2)
    assert isinstance(agent, TDMPC2)
    return agent


def sequence_batch(horizon: int = 3, batch: int = 32, obs_dim: int = 4, action_dim: int = 2, seed: int = 0) -> Batch:
    """Sequences of a linear system ``s' = 0.9 s + 0.5 [a, a]`` with reward ``-|s'|^2``."""
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(batch, obs_dim, generator=g)
    obs, actions, rewards, next_obs = [], [], [], []
    for _ in range(horizon):
        a = torch.rand(batch, action_dim, generator=g) * 2 - 1
        s_next = 0.9 * s + 0.5 * a.repeat(1, obs_dim // action_dim)
        obs.append(s), actions.append(a), rewards.append(-(s_next**2).sum(-1, keepdim=True)), next_obs.append(s_next)
        s = s_next
    dones = torch.zeros(horizon, batch, 1)
    return Batch(torch.stack(obs), torch.stack(actions), torch.stack(rewards), torch.stack(next_obs), dones)


# ------------------------------------------------------------ discrete regression
def test_two_hot_round_trips_scalars_and_its_cross_entropy_is_smallest_at_the_target():
    bins = TwoHot()
    x = torch.tensor([[-300.0], [-1.0], [0.0], [0.37], [12.5], [5000.0]])
    encoded = bins.encode(x)
    assert torch.allclose(encoded.sum(-1), torch.ones(6))
    assert (encoded > 0).sum(-1).max() <= 2  # mass on at most two neighbouring bins
    decoded = bins.decode(torch.log(encoded.clamp(min=1e-12)))
    assert torch.allclose(decoded, x, rtol=1e-3, atol=1e-3)
    logits = torch.log(bins.encode(torch.tensor([[3.0]])).clamp(min=1e-12))
    losses = [bins.cross_entropy(logits, torch.tensor([[v]])).item() for v in (0.0, 2.0, 3.0, 4.0, 30.0)]
    assert int(np.argmin(losses)) == 2
    assert bins.decode(torch.full((1, 101), 5.0)).item() == pytest.approx(0.0, abs=1e-5)  # uniform -> symexp(0)


def test_values_beyond_the_bins_are_clipped_to_the_last_bin():
    bins = TwoHot(num_bins=11, vmin=-2, vmax=2)
    encoded = bins.encode(torch.tensor([[1e6], [-1e6]]))
    assert encoded[0, -1] == 1.0 and encoded[1, 0] == 1.0


# --------------------------------------------------------------- the world model
def test_latent_rollout_shapes_simnorm_and_zero_initialised_heads():
    cfg = WorldModelConfig(**TINY_MODEL)
    model = WorldModel(obs_dim=4, action_dim=2, cfg=cfg, termination=True, value_head=True)
    obs, actions = torch.randn(5, 4), torch.rand(3, 5, 2) * 2 - 1
    z = model.encode(obs)
    assert z.shape == (5, 16)
    groups = z.view(5, -1, cfg.simnorm_dim)
    assert torch.allclose(groups.sum(-1), torch.ones(5, 4)) and (groups >= 0).all()  # product of simplices
    zs = [z]
    for a in actions:
        zs.append(model.next(zs[-1], a))
    zs = torch.stack(zs)
    assert zs.shape == (4, 5, 16)
    assert torch.allclose(zs.view(4, 5, -1, cfg.simnorm_dim).sum(-1), torch.ones(4, 5, 4))
    assert model.q_logits(zs[:-1], actions).shape == (3, 3, 5, 101)  # [num_q, H, B, bins]
    assert model.q_values(zs[:-1], actions).abs().max() < 1e-6  # zero-initialised heads predict 0
    assert model.reward(zs[:-1], actions).abs().max() < 1e-6
    prior = model.pi(zs)
    assert prior.action.shape == (4, 5, 2) and prior.action.abs().max() <= 1 and torch.isfinite(prior.log_prob).all()
    assert model.value(zs).shape == (4, 5, 1) and model.terminated(zs).shape == (4, 5, 1)
    assert WorldModel(4, 2, cfg).terminated(z) is None


def test_model_losses_are_the_papers_rho_weighted_sums():
    """Consistency: sum_t rho^t mse(d(z_t, a_t), h(s_{t+1})) / H; reward and value: rho-weighted
    two-hot cross-entropies averaged over the horizon (and the Q members)."""
    agent = tiny_agent(rho=0.5)
    batch = sequence_batch(horizon=3)
    torch.manual_seed(1)
    _, latents, _, info = agent._model_loss(batch)
    m = agent.model
    with torch.no_grad():
        next_z = m.encode(batch.next_observations)
        z, expected = m.encode(batch.observations[0]), 0.0
        for t in range(3):
            z = m.next(z, batch.actions[t])
            expected += 0.5**t * F.mse_loss(z, next_z[t]).item()
            assert torch.allclose(z, latents[t + 1])
        reward_ce = m.bins.cross_entropy(m.reward_logits(latents[:-1], batch.actions), batch.rewards).mean(-1)
    assert info["consistency_loss"] == pytest.approx(expected / 3, rel=1e-5)
    assert info["reward_loss"] == pytest.approx(float((torch.tensor([1, 0.5, 0.25]) * reward_ce).sum() / 3), rel=1e-5)
    assert info["value_loss"] > 0


@pytest.mark.parametrize("fowm", [False, True], ids=["tdmpc2", "fowm"])
def test_updates_fit_dynamics_and_rewards(fowm):
    options = {"value_target": "expectile", "prior_objective": "awr", "episodic": True} if fowm else {}
    agent = tiny_agent(lr=3e-3, **options)
    first = agent.update(sequence_batch(batch=64, seed=0))
    for i in range(300):
        last = agent.update(sequence_batch(batch=64, seed=i % 8))
    assert last["reward_loss"] < 0.4 * first["reward_loss"] and last["value_loss"] < 0.4 * first["value_loss"]
    assert last["consistency_loss"] < 0.05 * first["consistency_loss"]
    assert all_finite([last])
    test = sequence_batch(batch=256, seed=99)  # held-out states
    with torch.no_grad():
        predicted = agent.model.reward(agent.model.encode(test.observations[0]), test.actions[0])
    constant_guess = (test.rewards[0] - test.rewards[0].mean()).abs().mean()
    assert F.l1_loss(predicted, test.rewards[0]) < 0.5 * constant_guess


def test_fowm_value_is_a_two_hot_regressor_fitted_by_expectile_weighted_cross_entropy():
    """V lives on Q's symlog bins, so on returns of hundreds its loss stays of the order of the
    other cross-entropies (an expectile MSE on raw returns would be ~1e4)."""
    agent = tiny_agent(value_target="expectile", prior_objective="awr", expectile=0.7)
    batch = sequence_batch(horizon=3)
    batch = Batch(batch.observations, batch.actions, batch.rewards * 100, batch.next_observations, batch.dones)
    torch.manual_seed(2)
    _, latents, q_data, info = agent._model_loss(batch)
    m = agent.model
    assert m.value_head[-1].out_features == m.cfg.num_bins
    with torch.no_grad():
        v_logits = m.value_logits(latents[:-1])
        weight = torch.where(q_data < m.bins.decode(v_logits), 0.3, 0.7).squeeze(-1)
        ce = (weight * m.bins.cross_entropy(v_logits, q_data)).mean(-1)
    assert info["v_loss"] == pytest.approx(float((torch.tensor([1, 0.5, 0.25]) * ce).sum() / 3), rel=1e-5)
    assert info["v_loss"] < 10 and info["value_loss"] < 10
    torch.manual_seed(3)
    q = torch.tensor([[[1.0]], [[-1.0]]])  # above and below V = 0 (zero-initialised head)
    under = tiny_agent(value_target="expectile", prior_objective="awr", expectile=0.9)
    v_logits = under.model.value_logits(torch.zeros(2, 1, 16))
    torch.testing.assert_close(under.model.value(torch.zeros(1, 16)), torch.zeros(1, 1))
    weights = torch.where(q < under.model.bins.decode(v_logits), 0.1, 0.9).flatten()
    assert weights.tolist() == pytest.approx([0.9, 0.1])  # the expectile weight of IQL's Eq. 5


def test_fowm_prior_has_fixed_noise_around_its_deterministic_action():
    with initialize_config_module("rlft.configs", version_base="1.3"):
        options = OmegaConf.to_container(compose("config", ["experiment=wm/hopper-weak"]).agent, resolve=True)
    options["model"].update(TINY_MODEL)
    agent = build_agent(options.pop("name"), options, obs_dim=4, action_dim=2)
    assert agent.model.cfg.prior_noise_std == 0.05 and agent.cfg.planner.terminal_reduce == "min"
    assert agent.model.prior[-1].out_features == 2  # a mean only: no std to train
    prior = agent.model.pi(agent.model.encode(torch.randn(500, 4)))
    noise = prior.action - prior.mean
    assert prior.log_prob is None and noise.abs().max() <= 0.3 + 1e-6
    assert noise.std().item() == pytest.approx(0.05, rel=0.1)
    with pytest.raises(ValueError, match="prior_noise_std"):
        tiny_agent(model={**TINY_MODEL, "prior_noise_std": 0.05})  # max_q's entropy needs a learned std


def test_fowm_options_are_checked():
    with pytest.raises(ValueError, match="needs the state value"):
        tiny_agent(prior_objective="awr")
    with pytest.raises(ValueError, match=r"unknown agent.model option\(s\) \['latnt_dim'\]"):
        build_agent("tdmpc2", {"model": {"latnt_dim": 8}}, 4, 2)
    with pytest.raises(ValueError, match="multiple of simnorm_dim"):
        tiny_agent(model={**TINY_MODEL, "latent_dim": 18})


# ------------------------------------------------------------------------- planning
@dataclass
class _Prior:
    action: torch.Tensor


class PointModel:
    """A known, noise-free latent model: ``z' = z + a``, reward ``-4 (z + a - goal)^2``, Q members
    that agree (0) except where ``disagree_above`` is exceeded by the action's first coordinate."""

    def __init__(self, goal: float, disagree_above: float | None = None, terminal: bool = False):
        self.goal, self.disagree_above, self.terminal = goal, disagree_above, terminal

    def next(self, z, a):
        return z + a

    def reward(self, z, a):
        return -4.0 * ((z + a - self.goal) ** 2).sum(-1, keepdim=True)

    def terminated(self, z):
        return torch.ones(*z.shape[:-1], 1) if self.terminal else None

    def q_values(self, z, a, target=False):
        spread = torch.zeros(*a.shape[:-1], 1)
        if self.disagree_above is not None:
            spread = 10.0 * (a[..., :1] > self.disagree_above).float()
        return torch.stack([spread, -spread, torch.zeros_like(spread)])

    def q(self, z, a, reduce="min", target=False):
        return torch.zeros(*a.shape[:-1], 1)

    def pi(self, z):
        return _Prior(torch.zeros_like(z))


def test_planner_with_exact_dynamics_picks_the_known_best_action():
    torch.manual_seed(0)
    planner = MPPIPlanner(PointModel(goal=0.6), 1, MPPIConfig(horizon=3, iterations=6, num_samples=256, num_elites=32,
                                                              num_pi_trajs=8), discount=0.99)
    z = torch.tensor([[0.0], [0.9], [-0.2]])  # three states planned for in one batch
    action, mean = planner.plan(z)
    assert action.shape == (3, 1) and mean.shape == (3, 3, 1)
    assert torch.allclose(action, torch.tensor([[0.6], [-0.3], [0.8]]), atol=0.08)  # straight to the goal
    assert mean[:, 1:].abs().max() < 0.15  # then stay
    # warm start: the next step begins from the shifted plan and still stays at the goal
    action2, _ = planner.plan(z + action, warm_mean=mean)
    assert action2.abs().max() < 0.1


def test_uncertainty_penalty_lowers_values_where_the_ensemble_disagrees():
    model = PointModel(goal=1.0, disagree_above=0.5)
    plain = MPPIPlanner(model, 1, MPPIConfig(horizon=2), discount=1.0)
    penalised = MPPIPlanner(model, 1, MPPIConfig(horizon=2, uncertainty_cost=0.5), discount=1.0)
    z = torch.zeros(4, 1)
    actions = torch.tensor([[0.2, 0.4, 0.8, 1.0], [0.0, 0.0, 0.0, 0.0]]).view(2, 4, 1)
    v_plain, v_pen = plain.trajectory_values(z, actions), penalised.trajectory_values(z, actions)
    std = torch.tensor([10.0, -10.0, 0.0]).std().item()
    assert torch.allclose(v_pen[:2], v_plain[:2])  # members agree: no penalty
    assert torch.allclose(v_plain[2:] - v_pen[2:], torch.full((2, 1), 0.5 * std))  # lambda * std at step 0
    torch.manual_seed(0)
    bold = plain.plan(torch.zeros(1, 1))[0].item()
    torch.manual_seed(0)
    careful = penalised.plan(torch.zeros(1, 1))[0].item()
    assert bold > 0.8 and careful < 0.55  # the penalty keeps the plan where the members agree


def test_fowm_terminal_value_is_the_minimum_of_two_members():
    model = PointModel(goal=0.0, disagree_above=-2.0)  # members 10, -10, 0 everywhere
    actions = torch.zeros(1, 8, 1)
    values = {}
    for reduce in ("avg", "min"):
        torch.manual_seed(0)  # the same random pairs for both
        planner = MPPIPlanner(model, 1, MPPIConfig(horizon=1, uncertainty_cost=0.1, terminal_reduce=reduce), 1.0)
        values[reduce] = planner.trajectory_values(torch.zeros(8, 1), actions)
    assert (values["min"] < values["avg"]).all()
    assert set(torch.round(values["min"] - values["avg"]).flatten().tolist()) <= {-5.0, -10.0}


def test_predicted_termination_stops_reward_collection():
    planner = MPPIPlanner(PointModel(goal=0.0, terminal=True), 1, MPPIConfig(horizon=3), discount=1.0)
    actions = torch.full((3, 1, 1), 0.5)
    # only the first step's reward counts: the model says the episode ended on arriving
    assert planner.trajectory_values(torch.zeros(1, 1), actions).item() == pytest.approx(-4 * 0.25)


def test_agent_acts_in_bounds_and_keeps_evaluation_and_exploration_plans_apart():
    agent = tiny_agent()
    assert isinstance(agent, Policy)  # acts through the same protocol as every other policy
    obs = torch.randn(3, 4)
    a = agent.act(obs, deterministic=True)
    assert a.shape == (3, 2) and a.abs().max() <= 1
    agent.act(obs[:1], deterministic=False)
    assert agent._warm_means[True].shape[0] == 3 and agent._warm_means[False].shape[0] == 1
    agent.episodes_ended(np.array([False, True, False]), deterministic=True)  # sub-env 1 reset itself
    warm = agent._warm_means[True]
    assert (warm[1] == 0).all() and warm[0].abs().sum() > 0 and warm[2].abs().sum() > 0
    agent.reset(3, deterministic=True)
    assert agent._warm_means[True] is None and agent._warm_means[False] is not None
    assert tiny_agent(mpc=False).act(obs).shape == (3, 2)


# ---------------------------------------------------------------- sequence batches
def _episodes_dataset(lengths: list[int], terminal_last: bool = True) -> TransitionDataset:
    n = sum(lengths)
    obs = np.arange(n, dtype=np.float32).reshape(-1, 1).repeat(2, 1)
    ends = np.cumsum(lengths) - 1
    terminals, timeouts = np.zeros(n, bool), np.zeros(n, bool)
    (terminals if terminal_last else timeouts)[ends] = True
    return TransitionDataset(obs, np.zeros((n, 1), np.float32), np.arange(n, dtype=np.float32), terminals, timeouts,
                             obs + 1)


def test_sequences_stay_inside_episodes_and_reach_their_terminal_transition():
    lengths = [5, 3, 9, 4]
    buffer = ReplayBuffer(2, 1, 100)
    buffer.load_dataset(_episodes_dataset(lengths))
    batch = buffer.sample_sequences(2000, 3)
    assert batch.observations.shape == (3, 2000, 2) and batch.rewards.shape == (3, 2000, 1)
    rows = batch.rewards[..., 0].long()  # reward = row index
    assert (rows[1:] - rows[:-1] == 1).all()  # consecutive rows
    episode = np.searchsorted(np.cumsum(lengths) - 1, rows.numpy())
    assert (episode[0] == episode[-1]).all()  # never across an episode end
    assert batch.dones[:-1].sum() == 0 and batch.dones[-1].sum() > 0  # terminals only at the last step
    starts = set(rows[0].tolist())
    assert starts == {0, 1, 2, 5, 8, 9, 10, 11, 12, 13, 14, 17, 18}  # every valid start is drawn
    with pytest.raises(RuntimeError, match="shorter than the sequence length"):
        buffer.sample_sequences(4, 10)


def test_online_sequences_respect_episode_ends_and_the_offline_share():
    buffer = ReplayBuffer(2, 1, 60)
    buffer.load_dataset(_episodes_dataset([10, 10]))
    for step in range(12):  # two online episodes of 6 steps
        rows = buffer.add(np.full(2, 100.0 + step), np.zeros(1), np.float32(100 + step), np.zeros(2), np.float32(0))
        if step % 6 == 5:
            buffer.end_episode(torch.arange(rows.item() - 5, rows.item() + 1), np.zeros(6))
    batch = buffer.sample_sequences(1000, 4, offline_ratio=0.25)
    rows = batch.rewards[0, :, 0]
    assert (rows < 100).sum() == 250
    online_starts = set(rows[rows >= 100].long().tolist())
    assert online_starts == {100, 101, 102, 106, 107, 108}


# ------------------------------------------------------------- runs of rlft experiment=wm/...
def wm_config(dataset_path: Path, *overrides: str, experiment: str = "hopper-weak") -> DictConfig:
    tiny = [f"agent.model.{k}={v}" for k, v in TINY_MODEL.items()] + [f"agent.planner.{k}={v}" for k, v in TINY_PLANNER.items()]
    with initialize_config_module("rlft.configs", version_base="1.3"):
        return compose("config", [f"experiment=wm/{experiment}", *tiny,
                                  "trainer.batch_size=32", "trainer.offline_steps=60", "trainer.online_steps=90",
                                  "trainer.eval_every=30", "trainer.eval_episodes=2", "trainer.eval_envs=2",
                                  "trainer.log_every=15", "trainer.checkpoint_every=30", "trainer.keep_checkpoints=20",
                                  "progress=false", *overrides, f"dataset.source={dataset_path}"])


def test_world_model_run_resumes_bit_for_bit(tmp_path, native_hopper, monkeypatch):
    """Crash mid-online (planner warm starts, balanced batches, online sequences), resume, compare."""
    cfg = wm_config(native_hopper, "env.max_episode_steps=25")  # online checkpoints wait for an episode's end
    full_dir, cut_dir = tmp_path / "full", tmp_path / "cut"
    full = Experiment(cfg, full_dir).run()
    assert full["before"] is not None and full["after"] is not None
    for name in ("config.yaml", "metrics.csv", "eval.json", "learning_curve.png", "pretrained_checkpoint"):
        assert (full_dir / name).exists(), name

    state = run_interrupted(cfg, cut_dir, monkeypatch, after_saves=4)
    assert state["counters"]["phase_index"] == 1 and state["counters"]["phase_step"] > 0  # inside online
    resumed = Experiment(cfg, cut_dir)
    assert resumed.resume()
    assert resumed.run()["history"] == full["history"]
    final_full = load_checkpoint(latest_checkpoint(full_dir / "checkpoints"))["state"]["agent"]["model"]
    final_cut = load_checkpoint(latest_checkpoint(cut_dir / "checkpoints"))["state"]["agent"]["model"]
    for name, tensor in final_full.items():
        assert torch.equal(tensor, final_cut[name]), f"model.{name} differs after resume"


def test_every_world_model_experiment_composes():
    with initialize_config_module("rlft.configs", version_base="1.3"):
        for path in sorted((Path(rlft.configs.__file__).parent / "experiment" / "wm").glob("*.yaml")):
            cfg = compose("config", [f"experiment=wm/{path.stem}"])
            options = OmegaConf.to_container(cfg.agent, resolve=True)
            build_agent(options.pop("name"), options, 5, 2)
            paper = compose("config", [f"experiment=wm/{path.stem}", "wm_size=paper"])
            assert paper.agent.model.latent_dim == 512 and paper.agent.planner.num_samples == 512


def test_deepmind_control_run_on_the_shipped_dataset_and_wrong_task_data_is_refused(tmp_path):
    shipped = Path(rlft.configs.__file__).parent.parent / "data" / "minari" / "rlft" / "dmc-cartpole-balance" / "medium-v0"
    cfg = wm_config(shipped, "trainer.offline_steps=20", "trainer.online_steps=20", "trainer.eval_every=20",
                    "trainer.eval_episodes=1", "trainer.eval_envs=1", experiment="dmc-cartpole-balance")
    results = Experiment(cfg, tmp_path / "run").run()
    assert results["details"]["env_id"] == "rlft/DMC-v0" and results["after"]["lengths"] == [500]
    wrong = wm_config(shipped, "env.task=dmc-cartpole-swingup", experiment="dmc-cartpole-balance")
    with pytest.raises(DatasetError, match="collected with task='balance' but the run's rlft/DMC-v0 uses task='swingup'"):
        Experiment(wrong, tmp_path / "wrong")
