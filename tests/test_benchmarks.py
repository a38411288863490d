"""The benchmark drivers build the runs their docstrings describe (composed, not run)."""

from __future__ import annotations

import argparse
import json

import pytest
from hydra import compose, initialize_config_module

from rlft.scripts import bench_runs, benchmark_finetune, benchmark_llm, benchmark_o2o, benchmark_o2o_claims, benchmark_sb3


def _composed(overrides: list[str]):
    with initialize_config_module("rlft.configs", version_base="1.3"):
        return compose("config", [o for o in overrides if not o.startswith("init_from=")])


def test_the_claims_start_each_comparison_from_the_checkpoint_it_names():
    args = argparse.Namespace(
        task="hopper-medium", claims=list(benchmark_o2o_claims.CLAIMS), seeds=[0], offline_steps=100,
        online_steps=200, warmup_steps=50, eval_every=50, eval_episodes=2, width=32, cql_actions=2,
        online_eval_every=10, online_overrides=["trainer.utd=10"])
    chains = {c.method: c for c in benchmark_o2o_claims.build_chains(args)}
    assert set(chains) == {"wsrl", "cql", "calql", "iql", "iql-raw"}
    wsrl = {label: _composed(o) for label, o in chains["wsrl"].online.items()}
    assert {(c.trainer.warmup_steps, c.trainer.offline_data_ratio) for c in wsrl.values()} == {
        (0, 0.0), (50, 0.0), (0, 0.5)}  # the same CQL checkpoint, three ways
    assert {c.trainer.utd for c in wsrl.values()} == {10}  # --online-overrides reach every online run
    assert {c.trainer.eval_every for c in wsrl.values()} == {10}  # a finer grid online only
    cql, calql = (_composed(chains[m].offline) for m in ("cql", "calql"))
    assert not cql.agent.calibrated and calql.agent.calibrated and cql.trainer == calql.trainer
    raw, normalised = (_composed(chains[m].offline) for m in ("iql-raw", "iql"))
    assert raw.trainer.reward_return_range is None and normalised.trainer.reward_return_range == 1000.0
    assert all(_composed(c.offline).trainer.online_steps == 0 for c in chains.values())
    assert all(_composed(c.offline).trainer.eval_every == 50 for c in chains.values())


def test_the_sac_peer_comparison_runs_sac_from_scratch():
    args = argparse.Namespace(algo="sac", steps=1000, learning_starts=100, eval_every=500)
    cfg = _composed(benchmark_sb3.rlft_overrides(3, args))
    assert cfg.agent.name == "sac" and cfg.agent.backup_entropy and cfg.agent.hidden == [256, 256]
    assert (cfg.trainer.offline_steps, cfg.trainer.online_steps, cfg.trainer.warmup_steps) == (0, 1000, 100)
    assert cfg.trainer.offline_data_ratio == 0.0 and not cfg.trainer.normalize_obs and cfg.seed == 3


def test_the_ppo_peer_comparison_runs_rl_zoo_settings_from_scratch():
    args = argparse.Namespace(algo="ppo", steps=1_000_000, eval_every=10_240)
    cfg = _composed(benchmark_sb3.rlft_overrides(1, args))
    policy, ppo = cfg.method.policy, cfg.method.ppo
    assert cfg.pipeline.name == "finetune" and policy.family == "gaussian" and not policy.bc_init
    assert (policy.init_log_std, policy.activation, policy.tanh_mean) == (-2.0, "relu", False)
    assert (ppo.minibatch_size, ppo.update_epochs, ppo.gamma, ppo.gae_lambda, ppo.adam_eps) == (32, 5, 0.999, 0.99, 1e-5)
    assert ppo.obs_norm_running and ppo.reward_scale_running and not cfg.loop.normalize_obs
    assert cfg.loop.num_envs * cfg.loop.rollout_env_steps * cfg.loop.iterations == 1953 * 512  # ~1M steps
    assert cfg.loop.eval_every == 20


def test_llm_benchmark_variants_are_one_row_per_method_and_variant():
    args = argparse.Namespace(methods=["ppo", "grpo"], variants=["l0.3=text_method.algorithm.cot_lambda=0.3",
                                                                 "l1=text_method.algorithm.cot_lambda=1.0,sft.steps=7"])
    labels = benchmark_llm.run_labels(args)
    assert list(labels) == ["ppo l0.3", "ppo l1", "grpo l0.3", "grpo l1"]
    method, extra = labels["ppo l1"]
    cfg = _composed(["experiment=llm/ppo/numberline", f"text_method={method}", *extra])
    assert cfg.text_method.algorithm.cot_lambda == 1.0 and cfg.sft.steps == 7 and cfg.text_method.name == "ppo"
    assert list(benchmark_llm.run_labels(argparse.Namespace(methods=["ppo"], variants=[]))) == ["ppo"]


def test_the_llm_table_lists_every_method_with_its_seeds(tmp_path):
    results = {"command": "python -m rlft.scripts.benchmark_llm", "sft": {"numberline": "SFT 3 steps"}, "tasks": {
        "numberline": {"archer": {"before": [50.0, 40.0], "final": [90.0, 100.0], "best": [95.0, 100.0],
                                  "episodes": [64, 64], "minutes": [2.0, 4.0]}}}}
    args = argparse.Namespace(iterations=2, seeds=[0, 1], workers=2, train_metrics=["kl_ref"])
    benchmark_llm.write_markdown(results, args, tmp_path)
    text = (tmp_path / "results.md").read_text()
    assert "| archer | 45.0 ± 5.0 | 95.0 ± 5.0 | 97.5 ± 2.5 | 3.0 | 50 -> 90, 40 -> 100 |" in text
    assert "![kl_ref](numberline-kl_ref.png)" in text


def test_the_o2o_table_lists_every_method_with_its_seeds(tmp_path):
    results = {"command": "python -m rlft.scripts.benchmark_o2o", "wall_seconds": 600.0, "tasks": {
        "hopper-medium": {"iql": {"offline_end": [16.0, 14.0], "online_end": [18.0, 20.0]}}}}
    args = argparse.Namespace(offline_steps=100, online_steps=200, warmup_steps=50, width=32, cql_actions=2, seeds=[0, 1])
    benchmark_o2o.write_markdown(results, args, tmp_path)
    text = (tmp_path / "results.md").read_text()
    assert "| iql | 15.0 ± 1.0 | 19.0 ± 1.0 | 16 -> 18, 14 -> 20 |" in text and "wall clock 10 min" in text


def test_the_finetune_table_lists_every_method_with_its_seeds(tmp_path):
    results = {"command": "python -m rlft.scripts.benchmark_finetune", "wall_seconds": 1200.0, "tasks": {
        "mw-push": {"residual": {"bc": [60.0, 70.0], "final": [80.0, 70.0], "env_steps": [7200, 7200],
                                 "minutes": [3.0, 4.0]}}}}
    args = argparse.Namespace(bc_steps=100, iterations=3, num_envs=8, eval_episodes=10, seeds=[0, 1], workers=2)
    benchmark_finetune.write_markdown(results, args, tmp_path)
    text = (tmp_path / "results.md").read_text()
    assert "| residual | 65.0 ± 5.0 | 75.0 ± 5.0 | 7200 | 3.5 | 60 -> 80, 70 -> 70 |" in text


def test_the_vla_benchmark_runs_its_chain_and_tables_every_split(tmp_path):
    from rlft.scripts import benchmark_vla

    tiny = ["model.tiny={hidden_size: 16, intermediate_size: 32, num_hidden_layers: 1}", "sft.episodes=3",
            "sft.steps=2", "loop.num_envs=4", "loop.waves=1", "loop.eval_episodes=4", "loop.eval_envs=4",
            "text_method.rollout.group_size=2", "++text_method.dynamic_sampling.max_rounds=1"]
    benchmark_vla.main(["--tasks", "vla-babyai-gotoobj", "--seeds", "0", "--workers", "1", "--iterations", "1", "--eval-every", "1",
                        "--eval-episodes", "2", "--one-demo", "--out", str(tmp_path), "--overrides", *tiny])
    results = json.loads((tmp_path / "results.json").read_text())
    rows = results["tasks"]["vla-babyai-gotoobj"]["rows"]
    assert list(rows) == ["sft", "sft -> ppo", "sft -> grpo", "one demo -> grpo"]
    assert all(set(benchmark_vla.SPLITS) <= set(row) for row in rows.values())
    sft_eval = json.loads((benchmark_vla.run_dir(tmp_path, "vla-babyai-gotoobj", "sft", 0) / "eval.json").read_text())
    ppo_eval = json.loads((benchmark_vla.run_dir(tmp_path, "vla-babyai-gotoobj", "sft -> ppo", 0) / "eval.json").read_text())
    assert ppo_eval["before"]["returns"] == sft_eval["before"]["returns"]  # RL starts from that SFT policy
    assert (tmp_path / "vla-babyai-gotoobj.png").is_file() and "| sft -> grpo |" in (tmp_path / "results.md").read_text()


def test_the_export_benchmark_covers_every_exportable_family():
    from rlft.scripts import benchmark_export

    kinds = set()
    for _, overrides in benchmark_export.CASES.values():
        cfg = _composed(overrides)
        runner = cfg.pipeline.runner
        kinds.add(cfg.method.policy.family if runner.endswith("FinetuneExperiment") else
                  "vla" if runner.endswith("TextExperiment") else cfg.agent.name)
        assert "progress=false" in overrides and "threads=1" in overrides
    assert kinds == {"spot", "iql", "sac", "tdmpc2", "gaussian", "dppo", "residual", "vla"}


def test_plot_runs_draws_a_metrics_column_per_run_and_names_a_bad_run(tmp_path):
    from rlft.scripts import plot_runs

    csv = tmp_path / "metrics.csv"
    csv.write_text("step,phase,eval/success_rate,loss\n-5,sft,,1.0\n0,sft,0.5,\n10,rl,,0.5\n20,rl,0.9,\n")
    steps, values = bench_runs.metrics_curve(csv, "eval/success_rate")
    assert steps.tolist() == [0.0, 20.0] and values.tolist() == [0.5, 0.9]  # rows that have it, from step 0
    out = plot_runs.main(["first=" + str(tmp_path), "--out", str(tmp_path / "runs.png")])
    assert out.is_file() and out.stat().st_size > 0
    with pytest.raises(SystemExit):
        plot_runs.main([f"x={tmp_path / 'missing.csv'}", "--out", str(tmp_path / "no.png")])
    with pytest.raises(KeyError, match="no values of 'entropy'"):
        bench_runs.metrics_curve(csv, "entropy")


@pytest.mark.parametrize("compare", ["kernel", "before-after", "issue-18"])
def test_the_update_comparisons_time_two_variants_of_each_learner_and_write_a_row(tmp_path, compare):
    from rlft.scripts import benchmark_updates

    out = tmp_path / "speed.md"
    benchmark_updates.main(["--compare", compare, "--only", "TD3", "--threads", "1", "--updates", "2",
                            "--batch-size", "32", "--out", str(out)])
    rows = [line for line in out.read_text().splitlines() if line.startswith("| TD3")]
    assert len(rows) == 1
    first, second, ratio = (float(cell.strip().rstrip("x")) for cell in rows[0].split("|")[3:6])
    assert first > 0 and second > 0 and ratio == pytest.approx(second / first, abs=0.01)


def test_before_issue_35_steps_single_tensor_and_evaluates_iqls_target_in_each_loss():
    import torch

    from rlft.agents.iql import IQL, IQLConfig
    from rlft.agents.replay_buffer import Batch
    from rlft.scripts import benchmark_updates

    agent = benchmark_updates.as_before_issue_35(IQL(5, 2, IQLConfig(hidden=(8, 8))))
    groups = [g for opt in (agent.actor_optimizer, agent.critic_optimizer) for g in opt.param_groups]
    assert not any(g["fused"] or g["foreach"] for g in groups)
    batch = Batch(*(torch.randn(4, d) for d in (5, 2, 1, 5, 1)))
    first, second = agent.target_q(batch), agent.target_q(batch)
    assert first is not second and torch.equal(first, second)
    cached = IQL(5, 2, IQLConfig(hidden=(8, 8)))
    assert cached.target_q(batch) is cached.target_q(batch)  # one evaluation per update


def test_update_flops_count_the_actor_steps_that_every_second_update_takes():
    from rlft.agents.td3 import TD3, TD3Config
    from rlft.scripts.benchmark_updates import update_flops

    from test_host_syncs import hopper_batch

    agent, batch = TD3(11, 3, TD3Config(hidden=(32, 32))), hopper_batch()
    critic_only = update_flops(agent.update, batch, updates=1)  # TD3's first update trains the critics alone
    assert update_flops(agent.update, batch, updates=2) > critic_only


def test_the_update_loop_report_pairs_the_two_arms_of_each_seed(tmp_path):
    from rlft.scripts import benchmark_update_loop as loop

    out = tmp_path / "out"
    for arm, wall_s, rate in (("before", 120.0, 80.0), ("after", 100.0, 96.0)):
        folder = tmp_path / arm
        folder.mkdir()
        (folder / "metrics.csv").write_text("step,phase,phase_step,steps_per_sec\n"
                                            f"1000,offline,1000,{rate}\n2000,online,1000,{0.9 * rate}\n2000,online,,\n")
        history = [{"step": 1000, "phase": "offline", "normalized_score": 10.0},
                   {"step": 2000, "phase": "online", "normalized_score": 20.0}]
        (folder / "eval.json").write_text(json.dumps({"metric": "normalized_score", "history": history}))
        summary = loop.summarise_run(folder, wall_s, arm=arm, experiment="x", seed=0, overrides="", python="py")
        path = loop.summary_path(out, arm, "x", 0)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(summary))
    loop.main(["--arm", "before=py", "--arm", "after=py", "--experiment", "x=experiment=smoke", "--seeds", "0", "1",
               "--out", str(out), "--report-only"])
    text = (out / "results.md").read_text()
    assert "| 0 | 2.00 | 1.67 | 1.20x | 80.0 → 96.0 | 72.0 → 86.4 | 15.0 | 15.0 |" in text
    assert "mean 1.20x over 1 seed(s)" in text and "before 15.0 ± 0.0, after 15.0 ± 0.0" in text and "- after: online steps/s are 90% of offline updates/s." in text
    assert (out / "x.png").is_file()
    with pytest.raises(SystemExit):
        loop.main(["--arm", "before=py", "--experiment", "x=", "--out", str(out), "--report-only"])
    with pytest.raises(argparse.ArgumentTypeError, match="NAME=VALUE"):
        loop.named("no-equals-sign")


def test_the_online_step_breakdown_times_every_piece(tmp_path):
    from rlft.scripts import benchmark_online_step

    out = tmp_path / "online_step.md"
    benchmark_online_step.main(["--experiment", "o2o/iql/hopper-medium", "--steps", "40", "--out", str(out)])
    rows = [line.split("|") for line in out.read_text().splitlines()
            if line.startswith("| ") and "µs" not in line and "---" not in line]
    assert len(rows) == 6 and all(float(row[2]) > 0 for row in rows)
    assert "An online step runs at" in out.read_text()
