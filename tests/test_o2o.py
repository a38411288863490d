"""Offline-to-online machinery: MC returns, batch mixing, WSRL warm-up, Cal-QL's bound, init_from."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

from rlft.agents.replay_buffer import ReplayBuffer
from rlft.agents.cql import CQL, CQLConfig, conservative_gap
from rlft.offline.returns import episode_returns_to_go, returns_to_go
from rlft.common.typed_config import ConfigError
from rlft.runtime.experiment import Experiment


def o2o_config(dataset_path: Path, agent: str, *overrides: str) -> DictConfig:
    with initialize_config_module("rlft.configs", version_base="1.3"):
        return compose(
            "config",
            [
                "experiment=smoke",
                f"agent={agent}",
                f"dataset.source={dataset_path}",
                "agent.hidden=[32,32]",
                "trainer.offline_steps=40",
                "trainer.online_steps=60",
                "trainer.eval_every=1000",
                *overrides,
            ],
        )


# ------------------------------------------------------------------ MC returns
def test_returns_to_go_discount_within_episodes_only():
    rewards = np.array([1.0, 2.0, 3.0, 10.0, 20.0])
    got = returns_to_go(rewards, np.array([2, 4]), discount=0.5)
    np.testing.assert_allclose(got, [1 + 0.5 * 2 + 0.25 * 3, 2 + 0.5 * 3, 3, 10 + 0.5 * 20, 20])
    with pytest.raises(ValueError, match="episode_ends stop"):
        returns_to_go(rewards, np.array([2]), discount=0.5)


def test_sparse_failures_get_the_infinite_horizon_failure_value():
    failed = episode_returns_to_go(np.full(4, -1.0), 0.99, sparse_fail_reward=-1.0)
    np.testing.assert_allclose(failed, np.full(4, -100.0), rtol=1e-6)
    reached = episode_returns_to_go(np.array([-1.0, -1.0, 0.0]), 0.99, sparse_fail_reward=-1.0)
    np.testing.assert_allclose(reached, [-1 - 0.99, -1.0, 0.0], rtol=1e-6)
    dense = episode_returns_to_go(np.full(4, -1.0), 0.99)  # without the rule: a plain truncated sum
    assert dense[0] == pytest.approx(-(1 + 0.99 + 0.99**2 + 0.99**3))


# ------------------------------------------------------------- batch mixing
def _marked_buffer(n_offline: int, n_online: int) -> ReplayBuffer:
    """Offline rows carry reward 0, online rows reward 1."""
    buf = ReplayBuffer(1, 1, n_offline + n_online)
    for i in range(n_offline + n_online):
        buf.add(np.array([i]), np.zeros(1), np.float32(0.0), np.zeros(1), np.float32(0))
    buf.num_offline = n_offline  # treat the first rows as the dataset
    buf.rewards[n_offline:] = 1.0
    return buf


@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.5, 1.0])
def test_offline_data_ratio_mixes_the_stated_fraction(ratio):
    buf = _marked_buffer(300, 100)
    for _ in range(5):
        batch = buf.sample(256, offline_ratio=ratio)
        assert int((batch.rewards == 0).sum()) == round(ratio * 256)


def test_uniform_sampling_without_a_ratio_and_errors_without_data():
    buf = _marked_buffer(300, 100)
    torch.manual_seed(0)
    share = float((buf.sample(20_000).rewards == 0).float().mean())
    assert share == pytest.approx(0.75, abs=0.02)
    empty_online = _marked_buffer(10, 0)
    with pytest.raises(RuntimeError, match="no online transitions"):
        empty_online.sample(8, offline_ratio=0.5)
    with pytest.raises(ValueError, match=r"offline_ratio must be in \[0, 1\]"):
        buf.sample(8, offline_ratio=1.5)


# ------------------------------------------------------- the reference harness
def test_warmup_does_no_updates_and_fills_only_the_online_buffer(tmp_path, native_hopper):
    cfg = o2o_config(native_hopper, "wsrl", "trainer.warmup_steps=60", "trainer.offline_data_ratio=0.0",
                     "trainer.utd=4")
    exp = Experiment(cfg, tmp_path / "run")
    exp.run()
    assert exp.agent.num_updates == 40  # offline updates only: all 60 online steps were warm-up
    assert exp.buffer.num_offline == 0 and exp.buffer.num_online == 60  # offline data discarded
    assert exp.agent.online and exp.agent.cfg.cql_alpha == 0.0


@pytest.mark.parametrize("warmup, ratio, minimum, first", [
    (20, 0.5, None, 32),  # a 64-row batch draws 32 online rows: no update before the buffer holds them
    (40, 0.5, None, 40),  # the warm-up is longer
    (0, 0.0, None, 64),  # WSRL without warm-up still waits for one batch of online rows (wsrl finetune.py)
    (0, None, None, 0),  # batches draw uniformly from the dataset too: from the first step (IQL, SPOT, FQL)
    (10, 0.5, 0, 10),  # min_online_steps set by hand
])
def test_updates_start_past_the_warmup_and_a_batchs_online_rows(tmp_path, native_hopper, warmup, ratio, minimum,
                                                                 first):
    cfg = o2o_config(native_hopper, "cql", f"trainer.warmup_steps={warmup}", "trainer.utd=2",
                     f"trainer.offline_data_ratio={'null' if ratio is None else ratio}",
                     f"trainer.min_online_steps={'null' if minimum is None else minimum}", "trainer.online_steps=70")
    exp = Experiment(cfg, tmp_path / "run")
    n_offline = exp.buffer.num_offline
    assert exp.first_update_step == first
    exp.run()
    assert exp.agent.num_updates == 40 + 2 * (70 - first)
    assert exp.buffer.num_offline == (0 if ratio == 0.0 else n_offline) and exp.buffer.num_online == 70


def test_split_updates_step_the_critic_on_each_slice_and_the_actor_once(monkeypatch):
    """WSRL's high-UTD step (wsrl agents/sac.py update_high_utd) and RLPD's (rlpd sac_learner.py)."""
    buf = _marked_buffer(300, 100)
    batch = buf.sample(64, offline_ratio=0.5)
    for piece in batch.split(4):  # strided slices keep the batch's half-and-half mix, as rlpd's combine
        assert piece.observations.shape[0] == 16 and int((piece.rewards == 0).sum()) == 8
    with pytest.raises(ValueError, match="64 rows does not split into 3"):
        batch.split(3)
    agent = CQL(1, 1, CQLConfig(hidden=(8, 8), cql_alpha=0.0, policy_freq=4))
    rows: list[tuple[str, int]] = []
    for name in ("_critic_step", "_actor_step"):
        step = getattr(CQL, name)
        monkeypatch.setattr(CQL, name, lambda self, b, step=step, name=name: rows.append((name, len(b.rewards)))
                            or step(self, b))
    info = agent.update_split(batch, 4, "all")
    assert rows == [("_critic_step", 16)] * 4 + [("_actor_step", 64)] and agent.num_updates == 4
    assert {"critic_loss", "actor_loss", "alpha"} <= set(info)
    rows.clear()
    agent.update_split(batch, 4, "last")
    assert rows == [("_critic_step", 16)] * 4 + [("_actor_step", 16)] and agent.num_updates == 8


def test_split_mode_runs_whole_env_steps_and_refuses_what_it_cannot_split(tmp_path, native_hopper):
    cfg = o2o_config(native_hopper, "wsrl", "trainer.utd=4", "trainer.utd_mode=split", "trainer.online_batch_size=32",
                     "trainer.offline_data_ratio=0.0", "trainer.online_steps=50")
    exp = Experiment(cfg, tmp_path / "run")
    exp.run()
    assert exp.first_update_step == 32 and exp.agent.num_updates == 40 + 4 * (50 - 32) and exp.owed_updates == 0
    with pytest.raises(ConfigError, match=r"trainer.utd_mode=split: an online batch of 30 rows"):
        Experiment(o2o_config(native_hopper, "wsrl", "trainer.utd=4", "trainer.utd_mode=split",
                              "trainer.online_batch_size=30"), tmp_path / "bad")
    with pytest.raises(ConfigError, match="rollout.max_staleness=2 would let none run while a round is out"):
        Experiment(o2o_config(native_hopper, "wsrl", "trainer.utd=4", "trainer.utd_mode=split",
                              "trainer.online_batch_size=32", "rollout.backend=ray", "rollout.overlap=true",
                              "rollout.max_staleness=2"), tmp_path / "bad3")
    with pytest.raises(ConfigError, match="agent 'iql' is not of the SAC family"):
        Experiment(o2o_config(native_hopper, "iql", "trainer.utd_mode=split_last"), tmp_path / "bad2")


def test_calql_updates_follow_each_finished_episode_and_read_only_finished_ones(tmp_path, native_hopper,
                                                                               monkeypatch):
    """Cal-QL's reference collects a whole episode with the policy fixed, then makes len(episode)
    updates (conservative_sac_main.py)."""
    cfg = o2o_config(native_hopper, "calql", "trainer.offline_data_ratio=0.5", "trainer.online_steps=80",
                     "trainer.update_schedule=episode", "trainer.min_online_steps=0")
    exp = Experiment(cfg, tmp_path / "run")
    n_offline, seen = exp.buffer.num_offline, []
    update = CQL.update

    def recording(agent, batch):
        if agent.online:
            seen.append((exp.phase_step, exp.buffer.num_finished_online, batch.mc_returns.clone()))
        return update(agent, batch)

    monkeypatch.setattr(CQL, "update", recording)
    exp.run()
    ends = (exp.buffer.ends[n_offline:exp.buffer.size].nonzero().flatten() + 1).tolist()  # env steps ending episodes
    assert seen and all(torch.isfinite(mc).all() for _, _, mc in seen)  # every row's calibration bound is known
    assert sorted({step + 1 for step, _, _ in seen}) == [end for end in ends if end <= 80]  # only at episode ends
    assert len(seen) == max(end for end in ends if end <= 80)  # each finished episode's length, UTD 1


def test_rlpd_acts_at_random_first_then_makes_split_updates_on_half_dataset_batches(tmp_path, native_hopper,
                                                                                   monkeypatch):
    with initialize_config_module("rlft.configs", version_base="1.3"):
        cfg = compose("config", ["experiment=o2o/rlpd/hopper-weak", f"dataset.source={native_hopper}",
                                 "agent.hidden=[16,16]", "trainer.online_steps=40", "trainer.random_steps=10",
                                 "trainer.utd=2", "trainer.online_batch_size=16", "trainer.eval_every=1000",
                                 "trainer.eval_episodes=1", "trainer.eval_envs=1", "progress=false"])
    exp = Experiment(cfg, tmp_path / "run")
    assert exp.agent.cfg.num_critics == 10 and exp.agent.target_entropy == -exp.agent.action_dim / 2
    acted, split = [], []
    act, update_split = type(exp.agent).act, type(exp.agent).update_split
    monkeypatch.setattr(type(exp.agent), "act", lambda agent, obs, deterministic=True: acted.append(
        (exp.phase_step, deterministic)) or act(agent, obs, deterministic))
    monkeypatch.setattr(type(exp.agent), "update_split", lambda agent, batch, parts, rows: split.append(
        (exp.phase_step, len(batch.rewards), parts, rows)) or update_split(agent, batch, parts, rows))
    exp.run()
    explored = [step for step, deterministic in acted if not deterministic]
    assert explored == list(range(10, 40))  # the first 10 online steps never asked the policy
    assert [s[0] for s in split] == list(range(10, 40)) and {s[1:] for s in split} == {(16, 2, "last")}
    assert exp.agent.num_updates == 2 * 30 and exp.buffer.num_offline > 0


def test_recipes_carry_their_references_start_rules():
    def trainer(experiment: str) -> DictConfig:
        with initialize_config_module("rlft.configs", version_base="1.3"):
            return compose("config", [f"experiment={experiment}"]).trainer

    wsrl = trainer("o2o/wsrl/hopper-weak")
    assert (wsrl.warmup_steps, wsrl.offline_data_ratio, wsrl.utd, wsrl.online_batch_size, wsrl.utd_mode,
            wsrl.update_schedule, wsrl.min_online_steps) == (5000, 0.0, 4, 1024, "split", "step", None)
    calql = trainer("o2o/calql/hopper-weak")
    assert (calql.offline_data_ratio, calql.update_schedule, calql.min_online_steps) == (0.5, "episode", 0)
    for name in ("iql", "spot"):  # the dataset stays in the buffer, updates from the first online step
        t = trainer(f"o2o/{name}/hopper-weak")
        assert t.offline_data_ratio is None and t.warmup_steps == 0 and t.update_schedule == "step"
    e2o = trainer("o2o/e2o/hopper-weak")  # d3rlpy fit_online: update_start_step=1000 on an empty buffer
    assert (e2o.warmup_steps, e2o.offline_data_ratio) == (1000, 0.0)
    rlpd = trainer("o2o/rlpd/hopper-weak")  # README: --utd_ratio=20 --start_training 5000
    assert (rlpd.offline_steps, rlpd.offline_data_ratio, rlpd.random_steps, rlpd.utd, rlpd.online_batch_size,
            rlpd.utd_mode) == (0, 0.5, 5000, 20, 5120, "split_last")


# -------------------------------------------------------------------- Cal-QL
def test_calql_bound_keeps_policy_values_from_being_pushed_below_the_mc_return():
    torch.manual_seed(0)
    n, b, k = 2, 6, 3
    q_data = torch.randn(n, b)
    q_random = torch.randn(n, b, k)
    q_pi = torch.randn(n, b, k, requires_grad=True)
    q_next = torch.randn(n, b, k, requires_grad=True)
    log_pi, log_next = torch.randn(b, k), torch.randn(b, k)
    mc = torch.linspace(-1.0, 1.0, b)
    gap = conservative_gap(q_data, q_random, q_pi, q_next, log_pi, log_next, action_dim=2, mc_returns=mc)
    gap.sum().backward()
    below = q_pi.detach() < mc.view(1, b, 1)
    assert below.any() and (~below).any()
    assert torch.all(q_pi.grad[below] == 0)  # no push-down below V^mu
    assert torch.all(q_pi.grad[~below] > 0)  # pushed down above it, as in CQL
    # with every Q above the bound, Cal-QL's penalty is exactly CQL's
    low = torch.full((b,), -1e3)
    plain = conservative_gap(q_data, q_random, q_pi, q_next, log_pi, log_next, action_dim=2)
    torch.testing.assert_close(
        conservative_gap(q_data, q_random, q_pi, q_next, log_pi, log_next, action_dim=2, mc_returns=low), plain
    )


def test_calql_needs_mc_returns_and_reports_how_often_the_bound_binds():
    from rlft.agents.replay_buffer import Batch

    agent = CQL(3, 2, CQLConfig(hidden=(16,), calibrated=True, cql_n_actions=2))
    batch = Batch(torch.randn(8, 3), torch.rand(8, 2), torch.randn(8, 1), torch.randn(8, 3), torch.zeros(8, 1))
    with pytest.raises(ValueError, match="Monte-Carlo returns"):
        agent.update(batch)
    batch.mc_returns = torch.full((8, 1), 1e3)
    info = agent.update(batch)
    assert info["calql_bound_rate"] == 1.0 and np.isfinite(info["critic_loss"])


def test_conservative_penalty_equals_the_per_source_formulation():
    """One actor pass for pi(s) and pi(s') and one critic pass over the 3n actions give the penalty
    of repeating every state n times per source (CQL App. F written out), with the same noise."""
    from rlft.agents.replay_buffer import Batch
    from rlft.scripts.benchmark_updates import per_source_penalty

    agent = CQL(3, 2, CQLConfig(hidden=(16,), calibrated=True, cql_n_actions=4))
    b = 6
    batch = Batch(torch.randn(b, 3), torch.rand(b, 2), torch.randn(b, 1), torch.randn(b, 3), torch.zeros(b, 1),
                  torch.randn(b, 1))
    q_data = agent.critic(batch.observations, batch.actions)
    torch.manual_seed(3)
    penalty, info = agent.conservative_penalty(batch, q_data)
    torch.manual_seed(3)
    expected, expected_info = per_source_penalty(agent, batch, q_data)
    torch.testing.assert_close(penalty, expected)
    assert float(info["q_random"]) == pytest.approx(expected_info["q_random"], rel=1e-5)


def test_max_target_backup_backs_up_the_best_of_n_policy_actions():
    from rlft.policies.ensemble import reduce_ensemble

    agent = CQL(3, 2, CQLConfig(hidden=(16,), cql_n_actions=4, cql_max_target_backup=True))
    next_obs = torch.randn(5, 3)
    torch.manual_seed(1)
    value, log_prob = agent.next_value(next_obs)
    torch.manual_seed(1)
    actions, log_probs = agent.actor.sample(next_obs.repeat_interleave(4, dim=0))
    values = reduce_ensemble(agent.critic_target(next_obs.repeat_interleave(4, dim=0), actions), "min").view(5, 4)
    torch.testing.assert_close(value, values.max(1).values)
    torch.testing.assert_close(log_prob, log_probs.view(5, 4).gather(1, values.argmax(1, keepdim=True)).squeeze(1))
    plain = CQL(3, 2, CQLConfig(hidden=(16,), cql_n_actions=4))
    assert plain.next_value(next_obs)[0].shape == (5,)  # one sampled action per state without the option


# ------------------------------------------------------------------ init_from
def test_init_from_starts_online_from_the_offline_agent(tmp_path, native_hopper):
    offline_dir = tmp_path / "offline"
    Experiment(o2o_config(native_hopper, "iql", "trainer.online_steps=0"), offline_dir).run()
    assert (offline_dir / "pretrained_checkpoint").is_dir()
    offline_eval = json.loads((offline_dir / "eval.json").read_text())["before"]

    cfg = o2o_config(native_hopper, "iql", f"init_from={offline_dir}", "trainer.offline_steps=999")
    online = Experiment(cfg, tmp_path / "online")
    results = online.run()
    assert online.agent.num_updates == 40 + 60  # the offline run's updates, then one per online step
    assert results["before"]["returns"] == offline_eval["returns"]  # same agent, same eval episodes
    assert results["after"]["phase"] == "online"

    other = o2o_config(native_hopper, "calql", f"init_from={offline_dir}")
    with pytest.raises(ValueError, match="agent 'iql' cannot start a 'cql' run"):
        Experiment(other, tmp_path / "bad").run()


def test_the_offline_control_continues_the_same_checkpoint_offline_on_the_online_schedule(tmp_path, native_hopper):
    offline_dir = tmp_path / "offline"
    Experiment(o2o_config(native_hopper, "iql", "trainer.online_steps=0"), offline_dir).run()
    common = (f"init_from={offline_dir}", "trainer.warmup_steps=10", "trainer.utd=2", "trainer.eval_every=20",
              "trainer.offline_data_ratio=0.0")
    online = Experiment(o2o_config(native_hopper, "iql", *common), tmp_path / "online")
    tuned = online.run()
    control = Experiment(o2o_config(native_hopper, "iql", *common, "trainer.offline_control=true"), tmp_path / "ctl")
    held = control.run()
    assert control.buffer.num_online == 0 and control.buffer.num_offline > 0 == online.buffer.num_offline
    assert online.first_update_step == control.first_update_step == 64  # the fresh buffer's batch of online rows
    assert control.agent.num_updates == online.agent.num_updates == 40  # 60 steps < 64: neither updates yet
    assert held["before"]["returns"] == tuned["before"]["returns"]  # the same checkpoint
    assert [r["step"] for r in held["history"]] == [r["step"] for r in tuned["history"]]
    assert held["after"]["phase"] == "offline_control" and not control.agent.online
    longer = Experiment(o2o_config(native_hopper, "iql", *common[:-1], "trainer.offline_control=true"),
                        tmp_path / "ctl2")
    longer.run()
    assert longer.agent.num_updates == 40 + 2 * (60 - 10)


# ------------------------------------------------------------------ configs
O2O_EXPERIMENTS = sorted(
    f"o2o/{p.parent.name}/{p.stem}" for p in (Path(__file__).parents[1] / "configs" / "experiment" / "o2o").glob("*/*.yaml")
)


@pytest.mark.parametrize("experiment", O2O_EXPERIMENTS)
def test_every_o2o_experiment_composes_into_a_valid_agent_and_trainer(experiment):
    with initialize_config_module("rlft.configs", version_base="1.3"):
        cfg = compose("config", [f"experiment={experiment}"])
    method, dataset = experiment.split("/")[1:]
    assert cfg.dataset.name == dataset
    settings = Experiment.settings(cfg)
    agent_cfg, trainer = settings["agent"], settings["trainer"]
    maze = dataset == "pointmaze-umaze"
    if method == "wsrl":  # zhouzypaul/wsrl: CQL pretraining, REDQ ensemble, min-over-all actor
        assert trainer.warmup_steps == 5000 and trainer.offline_data_ratio == 0.0 and trainer.utd == 4
        assert agent_cfg.num_critics == 10 and agent_cfg.target_reduction == "redq" and agent_cfg.critic_layer_norm
        assert not agent_cfg.calibrated and agent_cfg.actor_reduction == "min" and agent_cfg.actor_layer_norm
        assert agent_cfg.cql_max_target_backup and agent_cfg.alpha_lr == 1e-4
        assert agent_cfg.online_overrides["cql_max_target_backup"] == maze  # kept online for AntMaze only
        assert (trainer.offline_steps, trainer.online_steps) == ((1_000_000, 250_000) if maze else (250_000, 500_000))
    if method == "calql":
        assert agent_cfg.calibrated and trainer.offline_data_ratio == 0.5
        assert agent_cfg.cql_max_target_backup and agent_cfg.alpha_lr == 1e-4
    if method == "e2o":
        assert agent_cfg.num_critics == 10 and agent_cfg.online_overrides["exploration"] == "ucb"
        assert agent_cfg.online_overrides["backup_entropy"] and trainer.offline_data_ratio == 0.0
    if method in ("iql", "calql", "wsrl") or (method == "spot" and maze):
        assert not trainer.normalize_obs
    if method == "iql":
        assert trainer.reward_return_range == (None if maze else 1000.0)
    if maze:  # AntMaze conventions: IQL/SPOT shift rewards by -1, the CQL family scales 10 and shifts -5
        assert (trainer.reward_scale, trainer.reward_bias) == ((10.0, -5.0) if method in ("calql", "wsrl")
                                                               else (1.0, -1.0))


def test_init_from_refuses_an_agent_trained_with_other_observation_statistics(tmp_path, hopper_dataset):
    from rlft.offline.loaders import save_native

    hopper_dataset.env_id = "Hopper-v5"
    first = save_native(hopper_dataset, tmp_path / "a.h5")
    hopper_dataset.observations = hopper_dataset.observations * 2.0
    hopper_dataset.next_observations = hopper_dataset.next_observations * 2.0
    second = save_native(hopper_dataset, tmp_path / "b.h5")
    Experiment(o2o_config(first, "iql", "trainer.online_steps=0"), tmp_path / "offline").run()
    with pytest.raises(ValueError, match="other observation normalisation"):
        Experiment(o2o_config(second, "iql", f"init_from={tmp_path / 'offline'}"), tmp_path / "online").run()


def test_reward_return_range_scales_rewards_by_the_dataset_s_return_spread(tmp_path, native_hopper, capsys):
    from rlft.offline.loaders import load_dataset
    from rlft.common.typed_config import ConfigError

    returns = load_dataset(native_hopper).episode_returns()
    exp = Experiment(o2o_config(native_hopper, "iql", "trainer.reward_return_range=1000"), tmp_path / "run")
    scale = 1000.0 / (returns.max() - returns.min())
    assert exp.buffer.reward_scale == pytest.approx(scale)
    assert f"reward scale {scale:.4g}" in capsys.readouterr().out
    stored = exp.buffer.rewards[:exp.buffer.num_offline, 0].double()
    assert float(stored.max() - stored.min()) > 0 and exp.describe()["details"]["reward_scale"] == pytest.approx(scale)
    with pytest.raises(ConfigError, match="set one of them"):
        Experiment(o2o_config(native_hopper, "iql", "trainer.reward_return_range=1000", "trainer.reward_scale=2"),
                   tmp_path / "b")
