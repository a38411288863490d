"""A run's policy as a deployment artifact: one ONNX graph from the raw environment observation to
the environment's native action, with what the caller must know beside it.

``export_run(run_dir, out)`` loads the run's newest checkpoint (the final state of a finished run)
through the run's own pipeline, wraps the policy as :class:`DeployGraph` (observation
normalisation, the policy, rescaling from ``[-1, 1]`` to the env's bounds and clipping, all in
the graph) and writes to ``out``:

- ``policy.onnx``: ``observation [B, obs_dim] float32 -> action [B, action_dim] float32``;
- ``metadata.json``: observation and action layout, action bounds, control semantics (chunk,
  executed steps, observation history), the normaliser's statistics, opset, library versions,
  the code's git commit, the run config's hash and the source checkpoint;
- ``golden.npz``: inputs (observations recorded from an episode of the PyTorch policy, and random
  ones) with the PyTorch outputs;
- ``report.md``: ONNX Runtime against PyTorch on those inputs (max abs error, refused above
  ``tolerance``), and batch-1 latency (p50/p99) of both.

This version exports the offline-to-online pipeline's actors (TD3, SPOT, SAC, CQL, Cal-QL, IQL,
E2O, WSRL: the deterministic action the evaluator takes), the TD-MPC2/FOWM policy prior (the
MPPI planner stays in Python; the metadata says so), Gaussian PPO (its mean action chunk, over
its observation history, with dataset or running statistics) and DPPO (its DDPM evaluation action
with the sampling noise ``[B, K + 1, chunk_dim]`` as a second input, so parity is exact for the
same noise); other run kinds are refused by name.
"""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import gymnasium as gym
import numpy as np
import torch
from torch import nn

OPSET = 18
TOLERANCE = 1e-5  # max abs error of ONNX Runtime against PyTorch that an export may have
RANDOM_INPUTS = 64
LATENCY_CALLS = 300


class ExportError(ValueError):
    """A run folder that cannot be exported, with the reason."""


class DeployGraph(nn.Module):
    """Raw observations -> native actions. The input is ``obs_history`` raw observations, oldest
    first, flat; each is normalised ``(obs - mean) / std`` (clipped to ``+-clip`` for running
    statistics), the policy maps them to ``chunk`` actions in ``[-1, 1]``, flat, and each is mapped
    to ``low + (a + 1) / 2 (high - low)`` and clipped to ``[low, high]``."""

    def __init__(self, policy: Callable[[torch.Tensor], torch.Tensor], obs_mean: np.ndarray | None,
                 obs_std: np.ndarray | None, low: np.ndarray, high: np.ndarray, obs_history: int = 1,
                 chunk: int = 1, obs_clip: float | None = None):
        super().__init__()
        self.policy, self.obs_history, self.chunk, self.obs_clip = policy, obs_history, chunk, obs_clip
        dim = len(low)

        def tiled(x: np.ndarray | None) -> torch.Tensor:
            return torch.zeros(0) if x is None else torch.as_tensor(np.tile(np.asarray(x, np.float32), obs_history))

        self.register_buffer("mean", tiled(obs_mean))
        self.register_buffer("std", tiled(obs_std))
        self.register_buffer("low", torch.as_tensor(low, dtype=torch.float32).reshape(dim))
        self.register_buffer("high", torch.as_tensor(high, dtype=torch.float32).reshape(dim))

    def forward(self, obs: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        if self.mean.numel():
            obs = (obs - self.mean) / self.std
            if self.obs_clip is not None:
                obs = obs.clamp(-self.obs_clip, self.obs_clip)
        out = self.policy(obs) if noise is None else self.policy(obs, noise)
        unit = out.clamp(-1.0, 1.0).unflatten(-1, (self.chunk, self.low.shape[0]))
        action = self.low + (unit + 1.0) * 0.5 * (self.high - self.low)
        return torch.minimum(torch.maximum(action, self.low), self.high).flatten(-2)


class Deterministic(nn.Module):
    """``owner.act(obs, deterministic=True)`` as a module holding ``network``'s weights."""

    def __init__(self, owner: Any, network: nn.Module):
        super().__init__()
        self.owner, self.network = owner, network

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.owner.act(obs, deterministic=True)


class DenoisingChain(nn.Module):
    """DPPO's evaluation action (DDPM through the frozen and the fine-tuned denoising steps, the
    last step noise-free) with its sampling noise ``[B, K + 1, chunk_dim]`` as an input, so the
    exported graph equals PyTorch exactly for the same noise."""

    def __init__(self, actor: nn.Module):
        super().__init__()
        self.actor = actor

    def forward(self, obs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.actor.base.executed(self.actor.sample_chain(obs, deterministic=True, noise=noise)[0])


class PolicyPrior(nn.Module):
    """A TD-MPC2 world model's policy prior, mean action: ``pi(encode(obs)).mean``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.model.pi(self.model.encode(obs)).mean


@dataclass
class Exportable:
    """What one run kind gives the exporter."""

    graph: DeployGraph
    family: str
    obs_dim: int  # of one raw observation
    env_cfg: Any  # the run's env config (to record an episode with the raw env)
    notes: list[str]
    noise_shape: tuple[int, ...] | None = None  # per-sample shape of a standard normal noise input


def load_runner(run_dir: Path):
    """The run's pipeline object with its newest checkpoint loaded (checked against its manifest;
    nothing in the run folder is written or renamed) and that checkpoint's folder."""
    from hydra.utils import get_class
    from omegaconf import OmegaConf

    from rlft.runtime.checkpoint import latest_checkpoint, load_checkpoint

    config = run_dir / "config.yaml"
    if not config.is_file():
        raise ExportError(f"{run_dir} is not an rlft run folder: it has no config.yaml")
    checkpoint = latest_checkpoint(run_dir / "checkpoints")
    if checkpoint is None:
        raise ExportError(f"{run_dir} has no checkpoint to export (checkpoints/ is empty or missing)")
    cfg = OmegaConf.load(config)
    runner = get_class(cfg.pipeline.runner)(cfg, run_dir)
    state = load_checkpoint(checkpoint)
    if state["pipeline"] != runner.pipeline:
        raise ExportError(f"{checkpoint} holds a {state['pipeline']!r} run, the config a {runner.pipeline!r} one")
    runner.load_pipeline_state(state["state"])
    return runner, checkpoint


def exportable(runner) -> Exportable:
    """The deployable policy of a loaded run, or :class:`ExportError` naming what is not exportable."""
    from rlft.agents.tdmpc2 import TDMPC2
    from rlft.envs.factory import make_env
    from rlft.envs.wrappers import native_action_space
    from rlft.runtime.experiment import Experiment
    from rlft.runtime.finetune import FinetuneExperiment

    env_cfg = runner.cfg.env if isinstance(runner, Experiment) else getattr(runner.cfg, "task", {}).get("env_cfg")
    if not isinstance(runner, (Experiment, FinetuneExperiment)):
        raise ExportError(f"runs of the {runner.pipeline!r} pipeline are not exportable yet (o2o and finetune "
                          "runs are)")
    raw = raw_env(env_cfg).observation_space
    if not isinstance(raw, gym.spaces.Box) or len(raw.shape) != 1:
        raise ExportError(f"{env_cfg.task}: {type(raw).__name__} observations are not exportable yet "
                          "(flat Box observations are)")
    space = native_action_space(make_env(env_cfg))
    obs_dim = int(raw.shape[0])
    if isinstance(runner, Experiment):
        agent = runner.agent
        mean, std = runner.obs_stats if runner.obs_stats is not None else (None, None)
        if isinstance(agent, TDMPC2):  # the planner is a loop of model rollouts: its policy prior deploys
            graph = DeployGraph(PolicyPrior(agent.model), mean, std, space.low, space.high)
            notes = ["the TD-MPC2 policy prior's mean action pi(encode(obs)): the run acted by MPPI planning "
                     f"(mpc={agent.cfg.mpc}), which stays in Python (rlft.agents.tdmpc2.MPPIPlanner)"]
            return Exportable(graph.eval(), f"o2o/{runner.cfg.agent.name}/policy-prior", obs_dim, env_cfg, notes)
        graph = DeployGraph(Deterministic(agent, agent.actor), mean, std, space.low, space.high)
        return Exportable(graph.eval(), f"o2o/{runner.cfg.agent.name}", obs_dim, env_cfg, [])
    family = runner.family
    if family.family == "residual":
        raise ExportError("the 'residual' policy family is not exportable yet (Gaussian PPO and DPPO are)")
    mean, std = runner.obs_stats if runner.obs_stats is not None else (None, None)
    clip = None
    if runner.ppo.obs_stats is not None:  # PPO's running statistics (the env then normalises nothing)
        stats = runner.ppo.obs_stats
        mean, std, clip = stats.mean, np.sqrt(stats.var + 1e-8), runner.ppo_cfg.obs_clip
    if family.family == "dppo":
        policy, noise = DenoisingChain(runner.actor), runner.actor.base.sampling_noise_shape()
        notes = [f"DDPM over all {family.denoising_steps} denoising steps, the last {family.ft_steps} "
                 "fine-tuned; the caller draws the standard normal 'noise' input (rlft.deploy does, seeded)"]
    else:
        policy, noise, notes = Deterministic(runner.actor, runner.actor), None, []
    graph = DeployGraph(policy, mean, std, space.low, space.high, family.obs_history, family.act_steps, clip)
    return Exportable(graph.eval(), f"finetune/{family.family}", obs_dim, env_cfg, notes, noise)


def raw_env(env_cfg: Any) -> gym.Env:
    """The task's env as a robot would drive it: its own observations and action bounds."""
    from rlft.envs.factory import make_task_env, resolve_task

    return make_task_env(resolve_task(env_cfg.task), env_cfg.get("max_episode_steps"),
                         dict(env_cfg.get("env_kwargs") or {}))


def record_observations(item: Exportable, seed: int, steps: int = 200) -> np.ndarray:
    """The graph's inputs over one episode (at most ``steps`` simulator steps) of the PyTorch graph
    in the raw env: stacked observation histories, one per policy query (every ``chunk`` steps)."""
    env, graph = raw_env(item.env_cfg), item.graph
    noise = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    history = [np.asarray(obs, dtype=np.float32)] * graph.obs_history
    inputs: list[np.ndarray] = []
    queue: list[np.ndarray] = []
    for _ in range(steps):
        if not queue:
            inputs.append(np.concatenate(history))
            extra = _noise(item, noise, 1)
            with torch.no_grad():
                action = graph(torch.as_tensor(inputs[-1])[None], *map(torch.as_tensor, extra))
            queue = list(action[0].numpy().reshape(graph.chunk, -1))
        obs, _, terminated, truncated, _ = env.step(queue.pop(0))
        history = history[1:] + [np.asarray(obs, dtype=np.float32)]
        if terminated or truncated:
            break
    return np.stack(inputs)


def _noise(item: Exportable, rng: np.random.Generator, batch: int) -> list[np.ndarray]:
    """The graph's noise input for ``batch`` samples (none for graphs without one)."""
    if item.noise_shape is None:
        return []
    return [rng.standard_normal((batch, *item.noise_shape)).astype(np.float32)]


def _percentiles(call: Callable[[], Any]) -> tuple[float, float]:
    """p50 and p99 of one call in milliseconds (after a warm-up)."""
    for _ in range(20):
        call()
    times = []
    for _ in range(LATENCY_CALLS):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1e3)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def export_run(run_dir: str | Path, out: str | Path | None = None, seed: int = 0) -> Path:
    """Export a run folder's policy (see the module docstring); returns the output folder."""
    import onnx
    import onnxruntime

    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / "export"
    runner, checkpoint = load_runner(run_dir)
    item = exportable(runner)
    out.mkdir(parents=True, exist_ok=True)
    recorded = record_observations(item, seed)
    rng = np.random.default_rng(seed)
    scale = recorded.std(0) + 1.0
    random = (recorded.mean(0) + rng.normal(size=(RANDOM_INPUTS, recorded.shape[1])) * scale).astype(np.float32)
    inputs = np.concatenate([recorded, random])
    noise = _noise(item, rng, len(inputs))
    with torch.no_grad():
        expected = item.graph(torch.as_tensor(inputs), *map(torch.as_tensor, noise)).numpy()
    path = out / "policy.onnx"
    batch = torch.export.Dim("batch", min=1)
    names = ["observation"] + (["noise"] if noise else [])
    validate = torch.distributions.Distribution._validate_args
    torch.distributions.Distribution.set_default_validate_args(False)  # argument checks are data-dependent branches
    try:
        example = (torch.as_tensor(inputs[:2]), *(torch.as_tensor(n[:2]) for n in noise))
        torch.onnx.export(item.graph, example, path, input_names=names, output_names=["action"], opset_version=OPSET,
                          dynamo=True, dynamic_shapes=tuple({0: batch} for _ in example), external_data=False)
    finally:
        torch.distributions.Distribution.set_default_validate_args(validate)
    onnx.checker.check_model(onnx.load(path))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(["action"], dict(zip(names, [inputs, *noise])))[0]
    errors = {"recorded": float(np.abs(got[: len(recorded)] - expected[: len(recorded)]).max()),
              "random": float(np.abs(got[len(recorded):] - expected[len(recorded):]).max())}
    if max(errors.values()) > TOLERANCE:
        raise ExportError(f"ONNX Runtime differs from PyTorch by {max(errors.values()):.2e} (> {TOLERANCE})")
    np.savez(out / "golden.npz", observation=inputs, action=expected, **({"noise": noise[0]} if noise else {}))
    one = [inputs[:1], *(n[:1] for n in noise)]
    with torch.no_grad():
        torch_ms = _percentiles(lambda: item.graph(*map(torch.as_tensor, one)))
    onnx_ms = _percentiles(lambda: session.run(["action"], dict(zip(names, one))))
    metadata = {
        "format": "onnx", "file": path.name, "family": item.family, "opset": OPSET,
        "observation": {"name": "observation", "shape": [item.graph.obs_history * item.obs_dim], "dtype": "float32",
                        "frame_shape": [item.obs_dim],
                        "normalisation": _stats(item.graph)},
        "action": {"name": "action", "shape": [item.graph.chunk * len(item.graph.low)], "dtype": "float32",
                   "frame_shape": [len(item.graph.low)],
                   "low": item.graph.low.tolist(), "high": item.graph.high.tolist(), "clipped": True},
        "control": {"chunk": item.graph.chunk, "executed_steps": item.graph.chunk, "obs_history": item.graph.obs_history},
        "noise": None if item.noise_shape is None else {"name": "noise", "shape": list(item.noise_shape),
                                                        "dtype": "float32", "distribution": "standard normal"},
        "notes": item.notes,
        "source": {"run": str(run_dir.resolve()), "checkpoint": checkpoint.name,
                   "config_sha256": hashlib.sha256((run_dir / "config.yaml").read_bytes()).hexdigest(),
                   "git_commit": _git_commit()},
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "onnx": onnx.__version__,
                     "onnxruntime": onnxruntime.__version__, "numpy": np.__version__},
        "parity": {"max_abs_error": errors, "tolerance": TOLERANCE},
        "latency_ms": {"torch": {"p50": torch_ms[0], "p99": torch_ms[1]},
                       "onnxruntime": {"p50": onnx_ms[0], "p99": onnx_ms[1]}},
    }
    (out / "metadata.json").write_text(json.dumps(metadata, indent=2))
    (out / "report.md").write_text(_report(metadata, len(recorded)))
    return out


def _stats(graph: DeployGraph) -> dict[str, Any] | None:
    """The normaliser of one observation, as numbers."""
    if not graph.mean.numel():
        return None
    frame = len(graph.mean) // graph.obs_history
    return {"mean": graph.mean[:frame].tolist(), "std": graph.std[:frame].tolist(), "clip": graph.obs_clip}


def _report(metadata: dict, recorded: int) -> str:
    parity, latency = metadata["parity"], metadata["latency_ms"]
    return "\n".join([
        f"# Export of {metadata['family']} ({metadata['source']['checkpoint']})", "",
        f"ONNX Runtime against PyTorch (max abs error of the action): {parity['max_abs_error']['recorded']:.2e} on "
        f"{recorded} observations of an episode, {parity['max_abs_error']['random']:.2e} on {RANDOM_INPUTS} random "
        f"ones (tolerance {parity['tolerance']:.0e}).", "",
        "| batch-1 latency (ms) | p50 | p99 |", "| --- | ---: | ---: |",
        f"| PyTorch eager | {latency['torch']['p50']:.3f} | {latency['torch']['p99']:.3f} |",
        f"| ONNX Runtime | {latency['onnxruntime']['p50']:.3f} | {latency['onnxruntime']['p99']:.3f} |", ""])
