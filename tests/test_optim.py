"""Optimizers: one place picks torch's fastest implementation (fused, else foreach) for every learner;
state dicts written by the single-tensor path still load; a fused run resumes bit for bit."""

from __future__ import annotations

import ast
import copy
import io
from pathlib import Path

import pytest
import torch

from rlft.agents.iql import IQL, IQLConfig
from rlft.agents.optim import adam, implementation, make_optimizer
from rlft.agents.ppo import PPO, PPOConfig
from rlft.agents.registry import build_agent
from rlft.agents.replay_buffer import Batch
from rlft.policies.gaussian import GaussianPPOPolicy

from test_world_model import tiny_agent

PACKAGE = Path(__file__).resolve().parents[1]
OPTIMIZERS = {name for name in dir(torch.optim) if isinstance(getattr(torch.optim, name), type)
              and issubclass(getattr(torch.optim, name), torch.optim.Optimizer)}


def optimizers_of(learner) -> list[torch.optim.Optimizer]:
    return [v for v in vars(learner).values() if isinstance(v, torch.optim.Optimizer)]


def batch(seed: int = 0, size: int = 32) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(torch.randn(size, 5, generator=g), torch.rand(size, 2, generator=g) * 2 - 1,
                 torch.randn(size, 1, generator=g), torch.randn(size, 5, generator=g), torch.zeros(size, 1),
                 torch.randn(size, 1, generator=g))


def test_no_module_builds_a_torch_optimizer_itself():
    """Every optimizer comes from ``agents/optim.py``: a direct ``torch.optim.Adam(...)`` elsewhere would
    silently run the slow single-tensor path."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if ".venv" in path.parts or "tests" in path.parts or path == PACKAGE / "agents" / "optim.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in OPTIMIZERS:
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.func.attr}")
    assert not offenders, offenders


@pytest.mark.parametrize("name", ["td3", "spot", "sac", "cql", "iql"])
def test_off_policy_learners_step_fused_on_cpu(name):
    agent = build_agent(name, {"hidden": [16, 16]} | ({"vae_hidden": 16} if name == "spot" else {}), 5, 2)
    groups = [g for opt in optimizers_of(agent) for g in opt.param_groups]
    assert len(groups) >= 2 and all(g["fused"] and not g["foreach"] for g in groups)


def test_ppo_and_world_model_learners_step_fused_on_cpu():
    ppo = PPO(GaussianPPOPolicy(5, 2, hidden=(8,)), 5, PPOConfig(critic_hidden=(8,)), 2)
    world_model = tiny_agent()
    for opt in optimizers_of(ppo) + optimizers_of(world_model):
        assert all(g["fused"] for g in opt.param_groups)


def test_an_optimizer_without_a_fused_kernel_runs_foreach():
    param = torch.nn.Parameter(torch.zeros(3))
    assert implementation(torch.optim.RMSprop, [param]) == {"foreach": True}
    assert make_optimizer(torch.optim.RMSprop, [param], lr=0.1).param_groups[0]["foreach"]
    assert implementation(torch.optim.Adam, [param]) == {"fused": True, "foreach": False}


def test_a_single_tensor_state_dict_loads_and_steps_fused():
    """A checkpoint written before optimizers were fused (``foreach``/``fused`` None) keeps its moments
    and step counts; this process's implementation is re-applied, and the next steps agree with the
    single-tensor path to rounding."""
    torch.manual_seed(0)
    old = IQL(5, 2, IQLConfig(hidden=(16, 16)))
    old.actor_optimizer = torch.optim.Adam(old.actor.parameters(), lr=old.cfg.actor_lr)
    old.critic_optimizer = torch.optim.Adam(
        [{"params": old.critic.parameters()}, {"params": old.value.parameters(), "lr": old.cfg.value_lr}],
        lr=old.cfg.critic_lr)
    for i in range(3):
        old.update(batch(i))
    state = copy.deepcopy(old.state_dict())  # as a checkpoint holds it: not the live moments
    assert state["critic_optimizer"]["param_groups"][0]["fused"] is None
    new = IQL(5, 2, IQLConfig(hidden=(16, 16)))
    new.load_state_dict(state)
    for opt in optimizers_of(new):
        assert all(g["fused"] and not g["foreach"] for g in opt.param_groups)
        assert all(s["step"].item() == 3.0 for s in opt.state.values())
    for i in range(3, 6):
        old.update(batch(i))
        new.update(batch(i))
    for a, b in zip(old.critic.parameters(), new.critic.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_a_fused_learner_resumes_bit_for_bit():
    torch.manual_seed(0)
    agent = IQL(5, 2, IQLConfig(hidden=(16, 16)))
    for i in range(4):
        agent.update(batch(i))
    saved = io.BytesIO()
    torch.save({"agent": agent.state_dict(), "rng": torch.get_rng_state()}, saved)
    saved.seek(0)
    loaded = torch.load(saved, weights_only=True)
    resumed = IQL(5, 2, IQLConfig(hidden=(16, 16)))
    resumed.load_state_dict(loaded["agent"])
    for i in range(4, 8):
        agent.update(batch(i))
    torch.set_rng_state(loaded["rng"])
    for i in range(4, 8):
        resumed.update(batch(i))
    for a, b in zip(agent.state_dict()["critic_optimizer"]["state"].values(),
                    resumed.state_dict()["critic_optimizer"]["state"].values()):
        assert all(torch.equal(a[k], b[k]) for k in ("step", "exp_avg", "exp_avg_sq"))
    for a, b in zip([*agent.actor.parameters(), *agent.critic.parameters(), *agent.value.parameters()],
                    [*resumed.actor.parameters(), *resumed.critic.parameters(), *resumed.value.parameters()]):
        assert torch.equal(a, b)


def test_param_groups_given_as_generators_are_kept():
    net = torch.nn.Linear(3, 1)
    opt = adam([{"params": iter([net.weight])}, {"params": iter([net.bias])}])
    assert [len(g["params"]) for g in opt.param_groups] == [1, 1]


def test_evaluating_iqls_target_once_per_update_changes_no_number():
    """Issue 35's IQL change against the learner as it was (the benchmark's 'before' arm, optimizers
    aside): the same updates to the bit."""
    from rlft.scripts.benchmark_updates import uncached_target_q

    torch.manual_seed(0)
    cached = IQL(5, 2, IQLConfig(hidden=(16, 16)))
    uncached = copy.deepcopy(cached)
    uncached.target_q = uncached_target_q.__get__(uncached)
    for i in range(4):
        cached.update(batch(i))
        uncached.update(batch(i))
    for a, b in zip(cached.state_dict()["actor"].values(), uncached.state_dict()["actor"].values()):
        assert torch.equal(a, b)
    for a, b in zip(cached.value.parameters(), uncached.value.parameters()):
        assert torch.equal(a, b)


def test_a_multi_tensor_soft_update_equals_a_per_parameter_lerp():
    from rlft.agents.base import soft_update

    torch.manual_seed(0)
    source, target = torch.nn.Linear(7, 5), torch.nn.Linear(7, 5)
    expected = [t.detach().clone().lerp_(s.detach(), 0.005) for t, s in zip(target.parameters(), source.parameters())]
    soft_update(target, source, 0.005)
    assert all(torch.equal(t, e) for t, e in zip(target.parameters(), expected))


@pytest.mark.parametrize("squash", [True, False], ids=["sac", "iql"])
def test_the_exploration_action_is_the_draw_sample_makes(squash):
    """Acting skips the log-density but draws the same noise: runs act exactly as before."""
    from rlft.policies.gaussian import GaussianActor

    actor = GaussianActor(5, 2, (8,), squash=squash, state_dependent_std=squash)
    obs = torch.randn(3, 5)
    torch.manual_seed(1)
    sampled = actor.sample(obs)[0]
    torch.manual_seed(1)
    assert torch.equal(actor.act(obs, deterministic=False), sampled.detach())


def test_a_fused_step_counts_as_an_in_place_write_of_every_stepped_parameter():
    """Caches of derived weights (the LLM policy's sampling copy and decoder) watch version counters,
    which torch's CPU fused kernels leave alone: a stale cache would sample with old weights."""
    stepped, untouched = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(3))
    optimizer = adam([stepped, untouched], lr=0.1)
    assert optimizer.param_groups[0]["fused"]
    stepped.grad = torch.ones(3)
    before = (stepped._version, untouched._version)
    optimizer.step()
    assert stepped._version > before[0] and untouched._version == before[1]
