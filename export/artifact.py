"""A run's policy as a deployment artifact: one ONNX graph from the raw environment observation to
the environment's native action, with what the caller must know beside it.

``export_run(run_dir, out)`` loads the run's newest checkpoint (the final state of a finished run)
through the run's own pipeline, wraps the policy as :class:`DeployGraph` (observation
normalisation, the policy, rescaling from ``[-1, 1]`` to the env's bounds and clipping, all in
the graph) and writes to ``out``:

- ``policy.onnx``: ``observation [B, obs_history * obs_dim] float32 -> action [B, chunk * action_dim]
  float32``, with further inputs where a family needs them (below);
- ``metadata.json``: observation and action layout, action bounds, control semantics (chunk,
  executed steps, observation history), the normaliser's statistics, opset, library versions,
  the code's git commit, the run config's hash and the source checkpoint;
- ``golden.npz``: inputs (the queries of an episode of ``rlft.deploy``'s runner driving the
  PyTorch graph, and random ones) with the PyTorch outputs;
- ``report.md``: ONNX Runtime against PyTorch on those inputs (max abs error, refused above
  ``tolerance``), and batch-1 latency (p50/p99, one thread) of both.

This version exports the offline-to-online pipeline's actors (TD3, SPOT, SAC, CQL, Cal-QL, IQL,
E2O, WSRL: the deterministic action the evaluator takes), the TD-MPC2/FOWM policy prior (the
MPPI planner stays in Python; the metadata says so), Gaussian PPO (its mean action chunk, over
its observation history, with dataset or running statistics), DPPO (its DDPM evaluation action
with the sampling noise ``[B, K + 1, chunk_dim]`` as a second input, so parity is exact for the
same noise) and ResiP's residual policy (frozen diffusion base plus residual, one action per call,
the base's chunk and the position in it as state inputs the caller feeds back: ``GraphInput``);
other run kinds are refused by name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from rlft.runtime.run_folder import strict_json
from rlft.export.graphs import DeployGraph, DenoisingChain, Deterministic, PolicyPrior, ResidualStep
from rlft.export.onnx_io import (OPSET, TOLERANCE, ExportError, TorchSession, latency, latency_table, provenance,
                                 torch_export)

RANDOM_INPUTS = 64


@dataclass
class GraphInput:
    """An input of the graph besides the observation, per sample. ``noise``: standard normal, drawn
    by the caller at every call; ``state``: zeros at an episode start, then the graph's output
    ``<name>_next`` of the previous call."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # a numpy dtype name
    kind: str  # "noise" or "state"
    high: float = 1.0  # state: random parity inputs lie in [-high, high] (floats) or [0, high) (integers)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind, "shape": list(self.shape), "dtype": self.dtype}
        if self.kind == "noise":
            out["distribution"] = "standard normal"
        else:
            out.update(initial=0, output=f"{self.name}_next")
        return out

    def random(self, rng: np.random.Generator, batch: int) -> np.ndarray:
        """Inputs for the parity check on random data."""
        shape = (batch, *self.shape)
        if self.kind == "noise":
            return rng.standard_normal(shape).astype(np.float32)
        if np.dtype(self.dtype).kind == "i":
            return rng.integers(0, int(self.high), shape).astype(self.dtype)
        return rng.uniform(-self.high, self.high, shape).astype(self.dtype)


@dataclass
class Exportable:
    """What one run kind gives the exporter."""

    graph: DeployGraph
    family: str
    obs_dim: int  # of one raw observation, flattened
    env_cfg: Any  # the run's env config (to record an episode with the raw env)
    notes: list[str]
    inputs: list[GraphInput] = field(default_factory=list)  # in the graph's argument order, after the observation
    layout: list[dict[str, Any]] | None = None  # a Dict observation's entries (observation_layout)

    @property
    def input_names(self) -> list[str]:
        return ["observation"] + [i.name for i in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return ["action"] + [f"{i.name}_next" for i in self.inputs if i.kind == "state"]


    def torch_session(self, record: bool = False) -> "TorchSession":
        return TorchSession(self.graph, self.input_names, self.output_names, record)


def run_config(run_dir: Path):
    """The run folder's ``config.yaml``, or :class:`ExportError` for a folder that is no run."""
    from omegaconf import OmegaConf

    config = run_dir / "config.yaml"
    if not config.is_file():
        raise ExportError(f"{run_dir} is not an rlft run folder: it has no config.yaml")
    return OmegaConf.load(config)


def load_runner(run_dir: Path, checkpoint: str | None = None):
    """The run's pipeline object with its ``checkpoint`` loaded (``latest``, ``pretrained``,
    ``step_<n>``: :func:`rlft.runtime.acting.resolve_checkpoint`; checked against its manifest;
    nothing in the run folder is written or renamed), that checkpoint's folder and its state."""
    from hydra.utils import get_class

    from rlft.runtime.acting import resolve_checkpoint
    from rlft.runtime.checkpoint import load_checkpoint

    cfg = run_config(run_dir)
    try:
        path = resolve_checkpoint(run_dir, checkpoint)
    except FileNotFoundError as error:
        raise ExportError(str(error)) from None
    runner = get_class(cfg.pipeline.runner)(cfg, run_dir)
    state = load_checkpoint(path)
    if state["pipeline"] != runner.pipeline:
        raise ExportError(f"{path} holds a {state['pipeline']!r} run, the config a {runner.pipeline!r} one")
    runner.load_pipeline_state(state["state"])
    return runner, path, state


def exportable(runner) -> Exportable:
    """The deployable policy of a loaded run, or :class:`ExportError` naming what is not exportable."""
    from rlft.envs.factory import make_env
    from rlft.envs.wrappers import native_action_space
    from rlft.runtime.experiment import Experiment
    from rlft.runtime.finetune import FinetuneExperiment

    env_cfg = runner.cfg.env if isinstance(runner, Experiment) else getattr(runner.cfg, "task", {}).get("env_cfg")
    if not isinstance(runner, (Experiment, FinetuneExperiment)):
        raise ExportError(f"runs of the {runner.pipeline!r} pipeline are not exportable yet (o2o and finetune "
                          "runs are)")
    raw = raw_env(env_cfg).observation_space
    layout = observation_layout(raw, env_cfg.task)
    space = native_action_space(make_env(env_cfg))
    obs_dim = gym.spaces.flatdim(raw)
    mean, std = runner.obs_stats if runner.obs_stats is not None else (None, None)
    if isinstance(runner, Experiment):
        item = _o2o(runner, mean, std, space, obs_dim, env_cfg)
    else:
        item = _finetune(runner, mean, std, space, obs_dim, env_cfg)
    item.layout = layout
    return item


def observation_layout(space: gym.spaces.Space, task: str) -> list[dict[str, Any]] | None:
    """``None`` for a flat Box observation; for a Dict of Boxes (e.g. Push-T's ``agent_pos`` and
    ``pixels``) its entries in the order ``FlattenObservation`` concatenates them, which is the
    order the policy read them in; other spaces are refused."""
    if isinstance(space, gym.spaces.Box) and len(space.shape) == 1:
        return None
    if isinstance(space, gym.spaces.Dict) and all(isinstance(s, gym.spaces.Box) for s in space.spaces.values()):
        return [{"key": key, "shape": list(sub.shape), "dtype": str(sub.dtype)} for key, sub in space.spaces.items()]
    raise ExportError(f"{task}: {space} observations are not exportable (flat Boxes and Dicts of Boxes are)")


def _o2o(runner, mean, std, space: gym.spaces.Box, obs_dim: int, env_cfg) -> Exportable:
    """An offline-to-online run: the actor's deterministic action, or a world model's policy prior."""
    from rlft.agents.tdmpc2 import TDMPC2

    agent, name = runner.agent, runner.cfg.agent.name
    if isinstance(agent, TDMPC2):  # the planner is a loop of model rollouts: its policy prior deploys
        notes = ["the TD-MPC2 policy prior's mean action pi(encode(obs)): the run acted by MPPI planning "
                 f"(mpc={agent.cfg.mpc}), which stays in Python (rlft.agents.tdmpc2.MPPIPlanner)"]
        prior = DeployGraph(PolicyPrior(agent.model), mean, std, space.low, space.high)
        return Exportable(prior.eval(), f"o2o/{name}/policy-prior", obs_dim, env_cfg, notes)
    actor = DeployGraph(Deterministic(agent, agent.actor), mean, std, space.low, space.high)
    return Exportable(actor.eval(), f"o2o/{name}", obs_dim, env_cfg, [])


def _finetune(runner, mean, std, space: gym.spaces.Box, obs_dim: int, env_cfg) -> Exportable:
    """A fine-tuning run: Gaussian PPO's mean chunk, DPPO's DDPM chunk, or ResiP's base plus residual."""
    family, clip = runner.family, None
    running = None
    if runner.ppo.obs_stats is not None:  # PPO's running statistics of what its actor reads
        stats = runner.ppo.obs_stats
        running = (stats.mean, np.sqrt(stats.var + 1e-8), runner.ppo_cfg.obs_clip)
    if family.family == "residual":  # the actor reads [obs, a_base]: its statistics go inside the step
        base = runner.base
        noise = GraphInput("noise", base.sampling_noise_shape(), "float32", "noise")
        inputs = [noise, GraphInput("base_chunk", (family.act_steps * len(space.low),), "float32", "state"),
                  GraphInput("chunk_step", (), "int64", "state", high=family.act_steps)]
        step = ResidualStep(runner.actor, base, family.act_steps, family.residual_scale, running)
        notes = [f"ResiP: the frozen diffusion base samples a chunk of {family.act_steps} actions by DDPM over "
                 f"{family.denoising_steps} steps when chunk_step is 0; every step adds "
                 f"{family.residual_scale} x the residual's mean; feed base_chunk and chunk_step back "
                 "(rlft.deploy does)"]
        graph = DeployGraph(step, mean, std, space.low, space.high, family.obs_history)
        return Exportable(graph.eval(), "finetune/residual", obs_dim, env_cfg, notes, inputs)
    if running is not None:  # the env then normalises nothing: the graph takes the running statistics
        mean, std, clip = running
    if family.family == "dppo":
        policy = DenoisingChain(runner.actor)
        inputs = [GraphInput("noise", runner.actor.base.sampling_noise_shape(), "float32", "noise")]
        notes = [f"DDPM over all {family.denoising_steps} denoising steps, the last {family.ft_steps} "
                 "fine-tuned; the caller draws the standard normal 'noise' input (rlft.deploy does, seeded)"]
    else:
        policy, inputs, notes = Deterministic(runner.actor, runner.actor), [], []
    graph = DeployGraph(policy, mean, std, space.low, space.high, family.obs_history, family.act_steps, clip)
    return Exportable(graph.eval(), f"finetune/{family.family}", obs_dim, env_cfg, notes, inputs)


def raw_env(env_cfg: Any) -> gym.Env:
    """The task's env as a robot would drive it: its own observations and action bounds."""
    from rlft.envs.factory import make_task_env, resolve_task

    return make_task_env(resolve_task(env_cfg.task), env_cfg.get("max_episode_steps"),
                         dict(env_cfg.get("env_kwargs") or {}))


def describe(item: Exportable) -> dict[str, Any]:
    """What a caller must feed and keep: the part of ``metadata.json`` that ``rlft.deploy`` reads."""
    graph = item.graph
    return {
        "format": "onnx", "file": "policy.onnx", "family": item.family, "opset": OPSET,
        "observation": {"name": "observation", "shape": [graph.obs_history * item.obs_dim], "dtype": "float32",
                        "frame_shape": [item.obs_dim], "layout": item.layout, "normalisation": _stats(graph)},
        "action": {"name": "action", "shape": [graph.chunk * len(graph.low)], "dtype": "float32",
                   "frame_shape": [len(graph.low)], "low": graph.low.tolist(), "high": graph.high.tolist(),
                   "clipped": True},
        "control": {"chunk": graph.chunk, "executed_steps": graph.chunk, "obs_history": graph.obs_history},
        "inputs": [i.describe() for i in item.inputs],
        "notes": item.notes,
    }


def record_feeds(item: Exportable, seed: int, steps: int = 200) -> dict[str, np.ndarray]:
    """The graph's inputs over one episode (at most ``steps`` simulator steps) of the deploy runner
    driving the PyTorch graph in the raw env, one row per policy query."""
    from rlft.deploy import DeployedPolicy

    env, session = raw_env(item.env_cfg), item.torch_session(record=True)
    policy = DeployedPolicy.over(describe(item), session, seed)
    obs, _ = env.reset(seed=seed)
    for _ in range(steps):
        obs, _, terminated, truncated, _ = env.step(policy.act(obs))
        if terminated or truncated:
            break
    return {name: np.concatenate([feed[name] for feed in session.feeds]) for name in item.input_names}


def parity_error(item: Exportable, got: list[np.ndarray], expected: list[np.ndarray]) -> float:
    """The largest difference over the outputs, the action's in units of half its range (the
    policy's own ``[-1, 1]``: in float32 an action near 512, Push-T's bound, has an ulp of 6e-5)."""
    half_range = np.tile((item.graph.high - item.graph.low).numpy().astype(np.float64) / 2, item.graph.chunk)
    errors = [np.abs(g.astype(np.float64) - e) for g, e in zip(got, expected)]
    errors[0] = errors[0] / half_range
    return max(float(error.max()) for error in errors)


def export_run(run_dir: str | Path, out: str | Path | None = None, seed: int = 0, checkpoint: str | None = None) -> Path:
    """Export a run folder's policy (see the module docstring) from ``checkpoint`` (default: the
    newest); returns the output folder."""
    import onnxruntime

    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / "export"
    if run_config(run_dir).pipeline.runner.endswith(".TextExperiment"):  # language policies: VLAs export
        from rlft.export.vla import export_vla

        if checkpoint not in (None, "latest"):
            raise ExportError("--checkpoint: a VLA exports its saved model (the run's end); choose none")
        return export_vla(run_dir, out, seed)
    runner, checkpoint, state = load_runner(run_dir, checkpoint)
    item = exportable(runner)
    out.mkdir(parents=True, exist_ok=True)
    recorded = record_feeds(item, seed)
    rng = np.random.default_rng(seed)
    obs = recorded["observation"]
    random = {"observation": (obs.mean(0) + rng.normal(size=(RANDOM_INPUTS, obs.shape[1])) * (obs.std(0) + 1.0))
              .astype(np.float32)}
    random.update({i.name: i.random(rng, RANDOM_INPUTS) for i in item.inputs})
    feeds = {name: np.concatenate([recorded[name], random[name]]) for name in item.input_names}
    expected = item.torch_session().run(None, feeds)
    path = out / "policy.onnx"
    batch = torch.export.Dim("batch", min=1)
    args = tuple(torch.as_tensor(feeds[name][:2]) for name in item.input_names)
    shapes = ({0: batch},) + ((tuple({0: batch} for _ in args[1:]),) if args[1:] else ())  # forward(obs, *inputs)
    torch_export(item.graph, args, item.input_names, item.output_names, shapes, path)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(item.output_names, feeds)
    split = len(obs)
    errors = {part: parity_error(item, [g[rows] for g in got], [e[rows] for e in expected])
              for part, rows in (("recorded", slice(0, split)), ("random", slice(split, None)))}
    if max(errors.values()) > TOLERANCE:
        raise ExportError(f"ONNX Runtime differs from PyTorch by {max(errors.values()):.2e} (> {TOLERANCE}, in "
                          "units of half the action range)")
    np.savez(out / "golden.npz", **feeds, **dict(zip(item.output_names, expected)))
    metadata = describe(item) | {
        **provenance(run_dir, checkpoint.name, out),
        "env": env_card(item.env_cfg),
        "evaluation": checkpoint_evaluation(state),
        "parity": {"max_abs_error": errors, "tolerance": TOLERANCE, "recorded_inputs": split,
                   "random_inputs": RANDOM_INPUTS},
        "latency_ms": latency(item.torch_session(), path, {name: value[:1] for name, value in feeds.items()}),
    }
    (out / "metadata.json").write_text(json.dumps(strict_json(metadata), indent=2))  # NaN (no success signal): null
    (out / "report.md").write_text(_report(metadata))
    return out


def _stats(graph: DeployGraph) -> dict[str, Any] | None:
    """The normaliser of one observation, as numbers."""
    if not graph.mean.numel():
        return None
    frame = len(graph.mean) // graph.obs_history
    return {"mean": graph.mean[:frame].tolist(), "std": graph.std[:frame].tolist(), "clip": graph.obs_clip}


def env_card(env_cfg: Any) -> dict[str, Any]:
    """What a robot engineer needs of the env the policy was trained in: its id, the control period
    (seconds between two actions, where the env says), the episode limit, and what each
    observation entry is where the env names them (a Dict's keys; a flat Box names none)."""
    env = raw_env(env_cfg)
    try:
        dt = getattr(env.unwrapped, "dt", None)
        fps = env.metadata.get("render_fps")
        space = env.observation_space
        names = ([f"{k}: {list(sub.shape)}" for k, sub in space.spaces.items()]
                 if isinstance(space, gym.spaces.Dict) else None)
        return {"task": str(env_cfg.task), "id": env.spec.id if env.spec else None,
                "control_period_s": float(dt) if dt is not None else (1.0 / fps if fps else None),
                "max_episode_steps": env.spec.max_episode_steps if env.spec else None,
                "observation": names or f"a flat vector of {gym.spaces.flatdim(space)} (the env names no entries)"}
    finally:
        env.close()


def checkpoint_evaluation(state: dict[str, Any]) -> dict[str, Any] | None:
    """The run's own evaluation of the exported checkpoint (the last one of its eval history, when
    it was made at the checkpoint's step), or ``None`` when the run did not evaluate that state."""
    history, step = state["eval_history"], state["counters"]["step"]
    if not history or history[-1]["step"] != step:
        return None
    record = history[-1]
    keys = ("step", "phase", "return_mean", "return_std", "normalized_score", "normalized_score_std", "success_rate")
    return {key: record[key] for key in keys} | {"episodes": len(record["returns"])}


GOLDEN = ("`golden.npz` holds the graph's inputs and PyTorch's outputs, one row per policy query: first the queries "
          "of one recorded episode (the deploy runner driving the PyTorch graph in the raw env), then random "
          "inputs. A runtime on the robot reproduces it by feeding each row and comparing its outputs within the "
          "tolerance above (`rlft.deploy` does this in its tests).")


def _report(metadata: dict) -> str:
    parity, latency, env, evaluation = (metadata["parity"], metadata["latency_ms"], metadata["env"],
                                         metadata["evaluation"])
    period = env["control_period_s"]
    score = ("not evaluated at this checkpoint" if evaluation is None else
             f"{evaluation['normalized_score']:.1f} normalised score (return {evaluation['return_mean']:.1f} ± "
             f"{evaluation['return_std']:.1f} over {evaluation['episodes']} episodes) at step {evaluation['step']}, "
             f"phase {evaluation['phase']}")
    return "\n".join([
        f"# Export of {metadata['family']} ({metadata['source']['checkpoint']})", "",
        f"- env: `{env['id']}` (task `{env['task']}`), control period "
        f"{'unknown' if period is None else f'{period:g} s'}, episodes of at most {env['max_episode_steps']} steps",
        f"- observation: {env['observation']}",
        f"- the run's own evaluation of this checkpoint: {score}",
        f"- source: run `{metadata['source']['run']}` (relative to this folder), trained at rlft "
        f"{(metadata['source']['trained_with'] or {}).get('commit')}", "",
        f"ONNX Runtime against PyTorch (max abs error over the outputs, the action's in units of half its range): {parity['max_abs_error']['recorded']:.2e} on "
        f"{parity['recorded_inputs']} policy queries of an episode, {parity['max_abs_error']['random']:.2e} on "
        f"{parity['random_inputs']} random inputs (tolerance {parity['tolerance']:.0e}).", "",
        *latency_table(latency), "", GOLDEN, ""])
