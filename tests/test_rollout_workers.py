"""Ray rollout workers equal the local vector env, survive dead and hung workers, and run the
BC -> PPO pipeline end to end (a local Ray cluster of 2 CPUs)."""

from __future__ import annotations

import copy
import csv
import functools
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray")

from rlft.agents.ppo import PPO, PPOConfig  # noqa: E402
from rlft.policies.gaussian import GaussianPPOPolicy  # noqa: E402
from rlft.runtime.finetune import FinetuneExperiment  # noqa: E402
from rlft.runtime.ray_pool import RolloutWorkerError  # noqa: E402
from rlft.runtime.rollout_workers import RayRollouts, RolloutConfig  # noqa: E402

from test_finetune import finetune_config, reach_demos  # noqa: E402,F401  (the demos fixture)

STEPS, ENVS = 30, 4


@pytest.fixture(scope="module", autouse=True)
def local_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def hopper_envs(fault: str | None = None, marker: str | None = None):
    """A picklable env builder (workers rebuild it); ``fault`` makes a worker reaching agent step 5
    of a rollout ``die`` (the process exits) or ``hang``: once, recorded in the file ``marker``, or
    on every attempt without one."""

    def make(num_envs: int):  # everything it calls is defined inside: Ray workers cannot import this module
        import gymnasium

        from rlft.envs import make_vector_env

        def first_to_claim(path: str) -> bool:
            """Whether this process created ``path`` (atomically: of workers racing, exactly one wins)."""
            try:
                os.close(os.open(path, os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                return False
            return True

        class Fault(gymnasium.vector.VectorWrapper):
            steps = 0

            def step(self, actions):
                Fault.steps += 1
                if fault and Fault.steps == 5 and (marker is None or first_to_claim(marker)):
                    if fault == "die":
                        os._exit(1)
                    time.sleep(60)
                return self.env.step(actions)

        return Fault(make_vector_env({"task": "hopper"}, num_envs))

    return make


def hopper_ppo(obs_norm: bool = True) -> PPO:
    torch.manual_seed(0)
    cfg = PPOConfig(critic_hidden=(16,), obs_norm_running=obs_norm, reward_scale_running=True)
    return PPO(GaussianPPOPolicy(11, 3, hidden=(16,)), 11, cfg, ENVS)


def local_rollout(ppo: PPO, seeds: list[int]):
    env = hopper_envs()(ENVS)
    obs, _ = env.reset(seed=seeds)
    return ppo.collect(env, obs, STEPS)[0]


def assert_same(a, b) -> None:
    for name in ("obs", "log_probs", "values", "rewards", "dones", "last_values"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert a.stored.keys() == b.stored.keys() and all(torch.equal(a.stored[k], b.stored[k]) for k in a.stored)
    assert a.episodes == b.episodes and a.env_steps == b.env_steps


def test_one_worker_is_the_local_vector_env_bit_for_bit():
    seeds = list(range(100, 100 + ENVS))
    local, remote = hopper_ppo(), hopper_ppo()
    rollouts = RayRollouts(RolloutConfig(backend="ray", workers=1), hopper_envs(), remote, ENVS, seed=0)
    for version in range(2):  # the second rollout starts from the statistics and RNG the first left
        torch.manual_seed(version)
        expected, local_rng = local_rollout(local, seeds), torch.get_rng_state()
        torch.manual_seed(version)
        got = rollouts.collect(remote, seeds, STEPS, version)
        assert_same(got, expected)
        assert torch.equal(torch.get_rng_state(), local_rng)
        assert remote.obs_stats.state_dict()["count"] == local.obs_stats.state_dict()["count"]
        assert torch.equal(remote.obs_stats.state_dict()["mean"], local.obs_stats.state_dict()["mean"])
        assert (remote.reward_scaler.returns == local.reward_scaler.returns).all()
    rollouts.close()


def test_two_workers_run_the_global_envs_side_by_side():
    seeds = list(range(200, 200 + ENVS))
    ppo = hopper_ppo(obs_norm=False)
    rollouts = RayRollouts(RolloutConfig(backend="ray", workers=2), hopper_envs(), ppo, ENVS, seed=0)
    returns = ppo.reward_scaler.stats.count
    got = rollouts.collect(ppo, seeds, STEPS, 0)
    assert len(set(rollouts.pids())) == 2
    assert got.obs.shape[:2] == (STEPS, ENVS) and got.env_steps == STEPS * ENVS
    # worker 1's sub-envs are global envs 2 and 3, reset with their seeds
    first = torch.as_tensor(hopper_envs()(ENVS).reset(seed=seeds)[0], dtype=torch.float32)
    torch.testing.assert_close(got.obs[0], first, rtol=0, atol=0)
    assert ppo.reward_scaler.stats.count == pytest.approx(returns + STEPS * ENVS)  # both workers' returns merged
    rollouts.close()


def test_statistics_grown_apart_merge_into_those_of_all_samples():
    from rlft.agents.ppo import RunningMeanStd
    from rlft.runtime.rollout_workers import merge_running_stats

    rng = np.random.default_rng(0)
    start, data = RunningMeanStd((3,)), [rng.normal(i, 1 + i, (50, 3)) for i in range(3)]
    start.update(rng.normal(size=(20, 3)))
    reference, finals = copy.deepcopy(start), []
    for batch in data:
        reference.update(batch)
        grown = copy.deepcopy(start)
        for row in batch.reshape(10, 5, 3):  # each copy merges its samples in its own steps
            grown.update(row)
        finals.append(grown.state_dict())
    merge_running_stats(start, finals)
    assert start.count == pytest.approx(reference.count)
    np.testing.assert_allclose(start.mean, reference.mean, rtol=1e-10)
    np.testing.assert_allclose(start.var, reference.var, rtol=1e-10)


@pytest.mark.parametrize("fault", ["die", "hang"])
def test_a_dead_or_hung_worker_is_restarted_and_its_rollout_redone(tmp_path, capfd, fault):
    seeds = list(range(300, 300 + ENVS))
    clean, faulty = hopper_ppo(), hopper_ppo()
    torch.manual_seed(0)
    expected = local_rollout(clean, seeds)
    cfg = RolloutConfig(backend="ray", workers=1, timeout_s=5 if fault == "hang" else 600)
    rollouts = RayRollouts(cfg, hopper_envs(fault, str(tmp_path / "struck")), faulty, ENVS, seed=0)
    torch.manual_seed(0)
    got = rollouts.collect(faulty, seeds, STEPS, 0)
    assert (tmp_path / "struck").exists() and rollouts.restarts == 1
    assert_same(got, expected)  # the complete batch, as if nothing happened
    assert f"rollout worker 0 {'died' if fault == 'die' else 'timed out'} at policy version 0" in capfd.readouterr().err
    rollouts.close()


def test_a_worker_that_keeps_failing_stops_the_run():
    cfg = RolloutConfig(backend="ray", workers=1, max_restarts=0)
    rollouts = RayRollouts(cfg, hopper_envs("die"), hopper_ppo(), ENVS, seed=0)  # dies on every attempt
    with pytest.raises(RolloutWorkerError, match="rollout worker 0 failed 1 times in a row at policy version 0"):
        rollouts.collect(hopper_ppo(), list(range(ENVS)), STEPS, 0)
    rollouts.close()


def _metric_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv") as f:
        return [{k: v for k, v in row.items() if not k.startswith("time/") and k != "steps_per_sec"}
                for row in csv.DictReader(f)]


def test_a_ray_ppo_run_ends_with_the_local_runs_metrics(tmp_path, reach_demos):  # noqa: F811
    common = ("method=gaussian", "loop.iterations=2")
    local = FinetuneExperiment(finetune_config(reach_demos, *common), tmp_path / "local").run()
    remote = FinetuneExperiment(finetune_config(reach_demos, *common, "rollout.backend=ray", "rollout.workers=1"),
                                tmp_path / "ray").run()
    assert remote["after"]["returns"] == local["after"]["returns"] and remote["step"] == local["step"]
    assert _metric_rows(tmp_path / "ray") == _metric_rows(tmp_path / "local")


def test_rollout_settings_are_checked():
    with pytest.raises(ValueError, match="rollout.backend must be one of"):
        RolloutConfig(backend="slurm")
    with pytest.raises(ValueError, match="loop.num_envs=3 does not split over rollout.workers=2"):
        RolloutConfig(backend="ray", workers=2).total_envs(3)
    assert RolloutConfig(backend="ray", workers=2, envs_per_worker=3).total_envs(8) == 6


def noisy_actor(noise: float):
    """A picklable evaluation policy (defined here, so Ray pickles it by value): elementwise (no
    batch shape changes its rounding), plus torch noise (to check that blocks sample from the
    evaluation's seeds)."""

    class NoisyActor:
        def __call__(self, obs: np.ndarray) -> np.ndarray:
            action = np.tanh(0.5 * obs[:, :3]) + noise * torch.randn(obs.shape[0], 3).numpy()
            return action.clip(-1, 1)

    return NoisyActor()


def _episodes(result) -> tuple:
    return result.returns, result.lengths, result.successes


def _eval_workers(workers: int, fault: str | None = None, marker: str | None = None):
    from rlft.runtime.ray_evaluation import eval_pool
    from rlft.runtime.ray_pool import WorkerSettings

    settings = WorkerSettings(backend="ray", workers=workers)
    return eval_pool(settings, {"eval": functools.partial(hopper_envs(fault, marker), 3)})


def test_ray_evaluation_is_the_local_evaluation():
    from rlft.runtime.evaluation import evaluate
    from rlft.runtime.ray_evaluation import episode_blocks, evaluate_on_workers

    assert episode_blocks(7, 3) == [(0, 3), (3, 2), (5, 2)] and episode_blocks(1, 2) == [(0, 1), (1, 0)]
    torch.manual_seed(5)
    before = torch.get_rng_state()
    local = evaluate(noisy_actor(0.3), hopper_envs()(3), 7, seed=40, rng_seed=9)
    assert torch.equal(torch.get_rng_state(), before)  # evaluating leaves the caller's stream alone
    pool = _eval_workers(1)
    got = evaluate_on_workers(pool, noisy_actor(0.3), "eval", 7, seed=40, rng_seed=9)
    assert _episodes(got) == _episodes(local)  # bit for bit
    pool.close()
    pool = _eval_workers(2)
    assert len(set(pool.pids())) == 2
    deterministic = evaluate(noisy_actor(0.0), hopper_envs()(3), 7, seed=40)
    got = evaluate_on_workers(pool, noisy_actor(0.0), "eval", 7, seed=40)
    assert _episodes(got) == _episodes(deterministic)  # the same seeds per episode
    noisy = evaluate_on_workers(pool, noisy_actor(0.3), "eval", 7, seed=40, rng_seed=9)
    assert noisy.returns[:4] == local.returns[:4] and noisy.returns[4:] != local.returns[4:]  # block 1: its own stream
    pool.close()


def test_a_worker_dying_in_an_evaluation_is_restarted_and_its_block_redone(tmp_path, capfd):
    from rlft.runtime.evaluation import evaluate
    from rlft.runtime.ray_evaluation import evaluate_on_workers

    expected = evaluate(noisy_actor(0.0), hopper_envs()(3), 6, seed=3)
    pool = _eval_workers(2, "die", str(tmp_path / "struck"))
    got = evaluate_on_workers(pool, noisy_actor(0.0), "eval", 6, seed=3, version=7)
    assert (tmp_path / "struck").exists() and pool.restarts == 1
    assert _episodes(got) == _episodes(expected)  # every episode, as if nothing happened
    assert "evaluation worker" in capfd.readouterr().err
    pool.close()


def test_a_language_policy_evaluates_on_ray_workers_as_it_does_locally(tmp_path):
    from test_text_train import llm_config

    from rlft.runtime.text_train import TextExperiment

    common = ("loop.iterations=1", "loop.eval_greedy=false", "loop.eval_episodes=6", "loop.eval_envs=3")
    local = TextExperiment(llm_config(*common), tmp_path / "local").run()
    remote = TextExperiment(llm_config(*common, "rollout.backend=ray"), tmp_path / "ray").run()
    assert [r["returns"] for r in remote["history"]] == [r["returns"] for r in local["history"]]
    assert remote["after"] == local["after"]
