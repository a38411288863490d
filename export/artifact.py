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

This first version exports the offline-to-online pipeline's actors (TD3, SPOT, SAC, CQL, Cal-QL,
IQL, E2O, WSRL: the deterministic action the evaluator takes); other run kinds are refused by name.
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
    """Raw observation -> native action: ``(obs - mean) / std``, the policy (actions in ``[-1, 1]``),
    then ``low + (a + 1) / 2 (high - low)`` clipped to ``[low, high]``."""

    def __init__(self, policy: Callable[[torch.Tensor], torch.Tensor], obs_mean: np.ndarray | None,
                 obs_std: np.ndarray | None, low: np.ndarray, high: np.ndarray):
        super().__init__()
        self.policy = policy
        dim = len(low)
        self.register_buffer("mean", torch.as_tensor(np.zeros(0) if obs_mean is None else obs_mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(np.zeros(0) if obs_std is None else obs_std, dtype=torch.float32))
        self.register_buffer("low", torch.as_tensor(low, dtype=torch.float32).reshape(dim))
        self.register_buffer("high", torch.as_tensor(high, dtype=torch.float32).reshape(dim))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        if self.mean.numel():
            obs = (obs - self.mean) / self.std
        unit = self.policy(obs).clamp(-1.0, 1.0)
        action = self.low + (unit + 1.0) * 0.5 * (self.high - self.low)
        return torch.minimum(torch.maximum(action, self.low), self.high)


class AgentPolicy(nn.Module):
    """An offline-to-online agent's evaluation action as a module (its actor, deterministic)."""

    def __init__(self, agent: Any):
        super().__init__()
        self.agent = agent
        self.actor = agent.actor  # registered, so the graph holds its weights

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.agent.act(obs, deterministic=True)


@dataclass
class Exportable:
    """What one run kind gives the exporter."""

    graph: DeployGraph
    family: str
    obs_dim: int
    env_cfg: Any  # the run's env config (to record an episode with the raw env)
    notes: list[str]


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
    from rlft.envs.factory import make_env
    from rlft.envs.wrappers import native_action_space
    from rlft.runtime.experiment import Experiment

    if not isinstance(runner, Experiment):
        raise ExportError(f"runs of the {runner.pipeline!r} pipeline are not exportable yet (o2o actors are)")
    agent = runner.agent
    if not hasattr(agent, "actor") or getattr(agent, "sequence_length", 1) > 1:
        raise ExportError(f"{type(agent).__name__} acts by planning, not by an actor network; it is not exportable yet")
    env = make_env(runner.cfg.env)
    if not isinstance(env.unwrapped.observation_space, gym.spaces.Box):
        raise ExportError(f"{runner.cfg.env.task}: {type(env.unwrapped.observation_space).__name__} observations are "
                          "not exportable yet (flat Box observations are)")
    space = native_action_space(env)
    mean, std = runner.obs_stats if runner.obs_stats is not None else (None, None)
    graph = DeployGraph(AgentPolicy(agent), mean, std, space.low, space.high).eval()
    return Exportable(graph, f"o2o/{runner.cfg.agent.name}", int(runner.dataset.obs_dim), runner.cfg.env, [])


def record_observations(env_cfg: Any, graph: DeployGraph, seed: int, steps: int = 200) -> np.ndarray:
    """Raw observations of one episode (at most ``steps``) of the PyTorch graph in the raw env."""
    from rlft.envs.factory import make_task_env, resolve_task

    env = make_task_env(resolve_task(env_cfg.task), env_cfg.get("max_episode_steps"), dict(env_cfg.get("env_kwargs") or {}))
    obs, _ = env.reset(seed=seed)
    observations = []
    for _ in range(steps):
        observations.append(np.asarray(obs, dtype=np.float32))
        with torch.no_grad():
            action = graph(torch.as_tensor(observations[-1])[None])[0].numpy()
        obs, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            break
    return np.stack(observations)


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
    recorded = record_observations(item.env_cfg, item.graph, seed)
    rng = np.random.default_rng(seed)
    scale = recorded.std(0) + 1.0
    random = (recorded.mean(0) + rng.normal(size=(RANDOM_INPUTS, item.obs_dim)) * scale).astype(np.float32)
    inputs = np.concatenate([recorded, random])
    with torch.no_grad():
        expected = item.graph(torch.as_tensor(inputs)).numpy()
    path = out / "policy.onnx"
    batch = torch.export.Dim("batch", min=1)
    validate = torch.distributions.Distribution._validate_args
    torch.distributions.Distribution.set_default_validate_args(False)  # argument checks are data-dependent branches
    try:
        torch.onnx.export(item.graph, (torch.as_tensor(inputs[:2]),), path, input_names=["observation"],
                          output_names=["action"], opset_version=OPSET, dynamo=True,
                          dynamic_shapes={"obs": {0: batch}}, external_data=False)
    finally:
        torch.distributions.Distribution.set_default_validate_args(validate)
    onnx.checker.check_model(onnx.load(path))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(["action"], {"observation": inputs})[0]
    errors = {"recorded": float(np.abs(got[: len(recorded)] - expected[: len(recorded)]).max()),
              "random": float(np.abs(got[len(recorded):] - expected[len(recorded):]).max())}
    if max(errors.values()) > TOLERANCE:
        raise ExportError(f"ONNX Runtime differs from PyTorch by {max(errors.values()):.2e} (> {TOLERANCE})")
    np.savez(out / "golden.npz", observation=inputs, action=expected)
    one = inputs[:1]
    with torch.no_grad():
        torch_ms = _percentiles(lambda: item.graph(torch.as_tensor(one)))
    onnx_ms = _percentiles(lambda: session.run(["action"], {"observation": one}))
    metadata = {
        "format": "onnx", "file": path.name, "family": item.family, "opset": OPSET,
        "observation": {"name": "observation", "shape": [item.obs_dim], "dtype": "float32",
                        "normalisation": _stats(item.graph)},
        "action": {"name": "action", "shape": [len(item.graph.low)], "dtype": "float32",
                   "low": item.graph.low.tolist(), "high": item.graph.high.tolist(), "clipped": True},
        "control": {"chunk": 1, "executed_steps": 1, "obs_history": 1},
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


def _stats(graph: DeployGraph) -> dict[str, list[float]] | None:
    if not graph.mean.numel():
        return None
    return {"mean": graph.mean.tolist(), "std": graph.std.tolist()}


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
