"""GPU readiness on a CPU machine: the learners' update steps never read a tensor back to the host.

On an accelerator every ``.item()``, ``float(t)``, ``bool(t)``, ``.tolist()``, ``.cpu()`` or
``.numpy()`` waits for the device to finish. The test counts such calls made *from rlft's own code*
during updates (torch's internals, e.g. Adam reading its CPU step counter, are not device syncs)
and requires none: metrics leave the update as tensors and become floats when the runner logs.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import pytest
import torch

from rlft.agents.replay_buffer import Batch
from rlft.agents.sac import SAC, SACConfig
from rlft.agents.td3 import TD3, TD3Config
from rlft.agents.cql import CQL, CQLConfig
from rlft.agents.iql import IQL, IQLConfig
from rlft.agents.spot import SPOT, SPOTConfig
from rlft.runtime.logger import MeanAccumulator

from test_world_model import sequence_batch, tiny_agent

PACKAGE = str(Path(__file__).resolve().parents[1])
VENV = str(Path(PACKAGE) / ".venv")
READBACKS = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__")


@pytest.fixture
def readbacks(monkeypatch) -> list[str]:
    """Every host readback of a tensor that rlft's code makes while the fixture is active."""
    calls: list[str] = []
    for name in READBACKS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if caller.startswith(PACKAGE) and not caller.startswith(VENV) and "/tests/" not in caller:
                calls.append(f"{_name} in {Path(caller).name}:{sys._getframe(1).f_lineno}")
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return calls


def hopper_batch(b: int = 16) -> Batch:
    g = torch.Generator().manual_seed(0)
    return Batch(torch.randn(b, 11, generator=g), torch.rand(b, 3, generator=g) * 2 - 1, torch.randn(b, 1, generator=g),
                 torch.randn(b, 11, generator=g), torch.zeros(b, 1), torch.randn(b, 1, generator=g))


WSRL = dict(hidden=(32, 32), num_critics=10, critic_layer_norm=True, target_reduction="redq", actor_reduction="mean")
LEARNERS: dict[str, Callable[[], tuple[Callable[[Batch], dict], Batch]]] = {
    "td3": lambda: (TD3(11, 3, TD3Config(hidden=(32, 32))).update, hopper_batch()),
    "sac-wsrl": lambda: (SAC(11, 3, SACConfig(**WSRL)).update, hopper_batch()),
    "cql": lambda: (CQL(11, 3, CQLConfig(hidden=(32, 32), cql_n_actions=3)).update, hopper_batch()),
    "calql-max-backup": lambda: (CQL(11, 3, CQLConfig(calibrated=True, cql_max_target_backup=True, cql_n_actions=3,
                                                      **WSRL)).update, hopper_batch()),
    "iql": lambda: (IQL(11, 3, IQLConfig(hidden=(32, 32))).update, hopper_batch()),
    "spot": lambda: (SPOT(11, 3, SPOTConfig(hidden=(32, 32), vae_hidden=32)).update, hopper_batch()),
    "spot-vae": lambda: (SPOT(11, 3, SPOTConfig(hidden=(32, 32), vae_hidden=32)).update_vae, hopper_batch()),
    "tdmpc2": lambda: (tiny_agent().update, sequence_batch()),
    "fowm": lambda: (tiny_agent(value_target="expectile", prior_objective="awr", episodic=True).update,
                     sequence_batch()),
}


@pytest.mark.parametrize("learner", sorted(LEARNERS))
def test_updates_and_metric_accumulation_never_read_tensors_back(learner, readbacks):
    update, batch = LEARNERS[learner]()
    accumulator = MeanAccumulator()
    for _ in range(4):  # TD3 and SPOT update the actor every second step
        accumulator.add(update(batch))
    assert readbacks == []
    assert "critic_loss" in accumulator.pop() or learner in ("tdmpc2", "fowm", "spot-vae")
    assert len(readbacks) > 0  # the logging boundary is where values come back (and the counter sees rlft's calls)


def test_a_ppo_update_reads_its_metrics_back_once_not_per_minibatch(readbacks):
    from rlft.agents.ppo import PPO, PPOConfig
    from rlft.envs import make_vector_env
    from rlft.policies.gaussian import GaussianPPOPolicy

    from test_ppo import PointReach  # noqa: F401  (registers rlft-test/PointReach-v0)

    torch.manual_seed(0)
    env = make_vector_env({"task": "rlft-test/PointReach-v0"}, 2)
    ppo = PPO(GaussianPPOPolicy(1, 1, hidden=(8,)), 1, PPOConfig(minibatch_size=8, update_epochs=3,
                                                                  critic_hidden=(8,), target_kl=None), 2)
    rollout = ppo.collect(env, env.reset(seed=0)[0], 16)[0]
    readbacks.clear()  # collection reads actions back for the envs: that is inherent
    metrics = ppo.update(rollout)
    assert metrics["ppo/updates"] == 12  # 32 transitions in minibatches of 8, 3 epochs
    assert [call.split(" in ")[0] for call in readbacks] == ["tolist"]  # the means, once per update
