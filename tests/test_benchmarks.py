"""The micro-benchmarks build the runs and rows their docstrings describe (composed, not run); the
suites' grids are tested in test_suites.py."""

from __future__ import annotations

import argparse
import json

import pytest
from hydra import compose, initialize_config_module

from rlft.scripts import bench_runs


def _composed(overrides: list[str]):
    with initialize_config_module("rlft.configs", version_base="1.3"):
        return compose("config", [o for o in overrides if not o.startswith("init_from=")])


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
    benchmark_online_step.main(["--experiment", "o2o/iql/hopper-weak", "--steps", "40", "--out", str(out)])
    rows = [line.split("|") for line in out.read_text().splitlines()
            if line.startswith("| ") and "µs" not in line and "---" not in line]
    assert len(rows) == 6 and all(float(row[2]) > 0 for row in rows)
    assert "An online step runs at" in out.read_text()
