"""Ray collection for the offline-to-online runner: one worker stepping once per round is the
local run; several workers tag their transitions, keep the staleness bound and are deterministic;
a dead worker is rebuilt where its env was; a resumed Ray run equals an uninterrupted one."""

from __future__ import annotations

import csv
import functools
import os
from pathlib import Path

import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray")

from rlft.agents.online import EnvStepper  # noqa: E402
from rlft.agents.registry import make_agent  # noqa: E402
from rlft.agents.replay_buffer import ReplayBuffer  # noqa: E402
from rlft.agents.td3 import TD3Config  # noqa: E402
from rlft.runtime.checkpoint import latest_checkpoint, load_checkpoint  # noqa: E402
from rlft.runtime.experiment import Experiment  # noqa: E402
from rlft.runtime.transition_workers import CollectionConfig, RayTransitions  # noqa: E402
from rlft.common.typed_config import ConfigError  # noqa: E402

from conftest import run_interrupted  # noqa: E402
from test_o2o import o2o_config  # noqa: E402

RAY = ("rollout.backend=ray",)


@pytest.fixture(scope="module", autouse=True)
def local_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _metric_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv") as f:
        return [{k: v for k, v in row.items() if not k.startswith("time/") and k != "steps_per_sec"}
                for row in csv.DictReader(f)]


def _online_rows(buffer: ReplayBuffer) -> dict[str, torch.Tensor]:
    lo, hi = buffer.num_offline, buffer.size
    return {f: getattr(buffer, f)[lo:hi] for f in ReplayBuffer._STORED}


def _run(tmp_path: Path, name: str, native_hopper: Path, *overrides: str) -> Experiment:
    exp = Experiment(o2o_config(native_hopper, "sac", "trainer.log_every=20", "trainer.eval_every=30",
                                "trainer.eval_episodes=2", "trainer.eval_envs=2", *overrides), tmp_path / name)
    exp.run()
    return exp


def test_one_worker_stepping_once_per_round_is_the_local_run_bit_for_bit(tmp_path, native_hopper):
    local = _run(tmp_path, "local", native_hopper)
    remote = _run(tmp_path, "ray", native_hopper, *RAY)
    assert _metric_rows(tmp_path / "ray") == _metric_rows(tmp_path / "local")
    for field, tensor in _online_rows(local.buffer).items():
        assert torch.equal(tensor, _online_rows(remote.buffer)[field]), field
    for name, tensor in local.agent.actor.state_dict().items():
        assert torch.equal(tensor, remote.agent.actor.state_dict()[name]), name
    versions = local.buffer.versions[local.buffer.num_offline:local.buffer.size]
    assert versions[0] == 40 and torch.all(versions[1:] - versions[:-1] == 1)  # one update per step after 40 offline


def test_workers_tag_transitions_keep_the_staleness_bound_and_repeat_exactly(tmp_path, native_hopper):
    overlap = (*RAY, "rollout.workers=2", "rollout.steps_per_call=10", "rollout.overlap=true",
               "rollout.max_staleness=5", "trainer.utd=2")
    first = _run(tmp_path, "a", native_hopper, *overlap)
    _run(tmp_path, "b", native_hopper, *overlap)
    assert _metric_rows(tmp_path / "a") == _metric_rows(tmp_path / "b")  # deterministic given the seed
    assert first.agent.num_updates == 40 + 2 * 60 and first.buffer.num_online == 60  # nothing lost
    staleness = [float(r["rollout/staleness"]) for r in _metric_rows(tmp_path / "a") if r.get("rollout/staleness")]
    assert staleness and max(staleness) <= 5 and max(staleness) > 0  # the learner did update while rounds were out
    versions = first.buffer.versions[first.buffer.num_offline:first.buffer.size].reshape(3, 2, 10)  # round, worker
    assert torch.all(versions == versions[:, :, :1]) and torch.all(versions[1:, 0, 0] > versions[:-1, 0, 0])


def fault_envs(marker: str, at_step: int):
    """A picklable hopper builder (workers rebuild it) whose env's process exits at its
    ``at_step``-th step, once for all workers (the first to create ``marker``)."""

    def make():
        import gymnasium

        from rlft.envs import make_env

        class Fault(gymnasium.Wrapper):
            steps = 0

            def step(self, action):
                Fault.steps += 1
                if Fault.steps == at_step:
                    try:
                        os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
                    except FileExistsError:
                        return self.env.step(action)
                    os._exit(1)
                return self.env.step(action)

        return Fault(make_env({"task": "hopper"}))

    return make


def _collect(make_env, rounds: int) -> tuple[ReplayBuffer, int]:
    """``rounds`` rounds of 2 workers x 8 steps into a fresh buffer; also the restarts it took."""
    buffer = ReplayBuffer(11, 3, 200)
    agent = functools.partial(make_agent, "td3", TD3Config(hidden=(16, 16)), 11, 3, "cpu")
    torch.manual_seed(0)
    learner = agent()
    collector = RayTransitions(CollectionConfig(backend="ray", workers=2, steps_per_call=8), make_env, agent,
                               buffer, seed=3, mc_discount=0.99, sparse_fail_reward=None)
    torch.manual_seed(0)
    for version in range(rounds):
        collector.start(learner, 16, version)
        collector.finish()
    restarts = collector.restarts
    collector.close()
    return buffer, restarts


def test_a_dead_worker_is_rebuilt_where_its_env_was_and_its_round_redone(tmp_path, capfd):
    from rlft.envs import make_env

    clean, _ = _collect(functools.partial(make_env, {"task": "hopper"}), rounds=4)
    faulty, restarts = _collect(fault_envs(str(tmp_path / "struck"), 21), rounds=4)
    assert restarts == 1  # the first worker to reach its env's 21st step (round 3) died there
    for field, tensor in _online_rows(clean).items():
        assert torch.equal(tensor, _online_rows(faulty)[field]), field  # the buffer as if nothing happened
    assert "collection worker" in capfd.readouterr().err


def test_env_stepper_state_replays_the_episode_exactly():
    from rlft.envs import make_env

    stepper = EnvStepper(make_env({"task": "hopper"}), 5, torch.device("cpu"))
    act = lambda obs: torch.full((1, 3), 0.3)  # noqa: E731
    stepper.run(act, 7, 0)
    copy = EnvStepper(make_env({"task": "hopper"}), 99, torch.device("cpu"))
    copy.load_state_dict(stepper.state_dict())
    np.testing.assert_array_equal(copy.obs, stepper.obs)
    a, b = stepper.run(act, 30, 1), copy.run(act, 30, 1)
    np.testing.assert_array_equal(a.observations, b.observations)
    np.testing.assert_array_equal(a.rewards, b.rewards)


def test_a_resumed_ray_run_equals_an_uninterrupted_one(tmp_path, native_hopper, monkeypatch):
    overrides = ("trainer.log_every=20", "trainer.checkpoint_every=20", *RAY, "rollout.workers=2",
                 "rollout.steps_per_call=5")
    cfg = o2o_config(native_hopper, "sac", *overrides)
    full = Experiment(cfg, tmp_path / "full").run()
    state = run_interrupted(cfg, tmp_path / "cut", monkeypatch, after_saves=3)  # offline 20, offline end, online 20
    assert state["counters"]["phase_index"] == 1 and state["counters"]["phase_step"] == 20
    resumed = Experiment(cfg, tmp_path / "cut")
    assert resumed.resume()
    assert resumed.run()["history"] == full["history"]
    assert _metric_rows(tmp_path / "cut") == _metric_rows(tmp_path / "full")
    final = [load_checkpoint(latest_checkpoint(tmp_path / d / "checkpoints"))["state"]["agent"]["actor"]
             for d in ("full", "cut")]
    assert all(torch.equal(t, final[1][k]) for k, t in final[0].items())


def test_collection_settings_are_checked(tmp_path, native_hopper):
    with pytest.raises(ValueError, match="rollout.overlap=true needs rollout.backend=ray"):
        CollectionConfig(overlap=True)
    with pytest.raises(ValueError, match="rollout.steps_per_call must be >= 1"):
        CollectionConfig(backend="ray", steps_per_call=0)
    with pytest.raises(ConfigError, match="agent 'tdmpc2' acts from a state .a planner's warm start"):
        Experiment(o2o_config(native_hopper, "tdmpc2", "~agent.hidden", *RAY), tmp_path / "wm")
