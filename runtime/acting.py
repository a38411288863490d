"""A run's policy ready to act, loaded from one of its checkpoints without its dataset or replay
buffer, and evaluated the way the run evaluated itself (same seeds, episodes, env count and
policy-noise seed, so the latest checkpoint reproduces ``eval.json``'s last record), optionally
recording each episode as an MP4.

The pipeline's runner class builds the policy (``Runner.acting``): o2o runs (the agent rebuilt
from the config and the env's shapes, the observation statistics read from the checkpoint) and
finetune runs of the gaussian and dppo families (the cloned base, or PPO's actor after it)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import gymnasium as gym

from rlft.runtime.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from rlft.runtime.evaluation import Acting, evaluate
from rlft.runtime.launch import load_run_config, runner_class
from rlft.runtime.run_folder import strict_json, write_atomically
from rlft.runtime.runner import PRETRAINED_CHECKPOINT
from rlft.runtime.video import RecordEpisode

EVALS_DIR = "evals"  # <run>/evals/<checkpoint>_seed<seed>_<n>ep.json (and videos/ beside it)


def resolve_checkpoint(run_dir: Path, checkpoint: str | None) -> Path:
    """The checkpoint folder ``checkpoint`` names in ``run_dir``: ``None``/``"latest"`` (the newest),
    ``"pretrained"`` (the end of pretraining), ``step_<n>`` or ``<n>``, or a path."""
    folder = run_dir / "checkpoints"
    if checkpoint in (None, "latest"):
        newest = latest_checkpoint(folder)
        if newest is None:
            raise FileNotFoundError(f"{run_dir} holds no checkpoint (checkpoints/ is empty or missing)")
        return newest
    if checkpoint == "pretrained":
        path = run_dir / PRETRAINED_CHECKPOINT
    elif Path(checkpoint).is_dir():
        path = Path(checkpoint)
    else:
        name = checkpoint if checkpoint.startswith("step_") else f"step_{int(checkpoint):09d}" \
            if checkpoint.isdigit() else checkpoint
        path = folder / name
    if not path.is_dir():
        kept = ", ".join(p.name for p in list_checkpoints(folder)) or "none"
        raise FileNotFoundError(f"no checkpoint {checkpoint!r} in {run_dir} (kept: {kept}; also 'latest', "
                                f"'pretrained')")
    return path


def load_acting(run_dir: str | Path, checkpoint: str | None = None, device: str = "cpu",
                deterministic: bool = True) -> tuple[Acting, Path]:
    """The policy of ``run_dir``'s ``checkpoint`` (:func:`resolve_checkpoint`) and that checkpoint's
    folder; the manifest is checked and nothing in the run folder is written."""
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir, action="load its policy")
    path = resolve_checkpoint(run_dir, checkpoint)
    state = load_checkpoint(path, map_location=device)
    cls = runner_class(cfg)
    if state["pipeline"] != cls.pipeline:
        raise ValueError(f"{path} holds a {state['pipeline']!r} run, its config a {cls.pipeline!r} one")
    return cls.acting(cfg, state, device, deterministic), path


def evaluate_run(run_dir: str | Path, checkpoint: str | None = None, episodes: int | None = None,
                 seed: int | None = None, video: bool = False, device: str = "cpu",
                 deterministic: bool = True) -> dict[str, Any]:
    """Evaluate a run folder's checkpoint: ``episodes`` (default: the run's own number) from
    ``seed`` (default: the run's evaluation seed), deterministic unless told (sampled actions
    draw from the run's evaluation noise seed, so a stochastic evaluation repeats too), written to
    ``<run>/evals/<checkpoint>_seed<seed>_<n>ep.json``; with ``video``, every episode as
    ``evals/videos/<checkpoint>_seed<seed>_ep<i>.mp4`` (the same envs and episodes: recording
    changes no number). Returns the record."""
    run_dir = Path(run_dir)
    acting, path = load_acting(run_dir, checkpoint, device, deterministic)
    episodes = acting.eval_episodes if episodes is None else episodes
    seed = acting.eval_seed if seed is None else seed
    out = run_dir / EVALS_DIR
    tag = f"{path.name}_seed{seed}" + ("" if deterministic else "_stochastic")
    started = time.perf_counter()
    recorders: list[RecordEpisode] = []

    def record(env: gym.Env) -> gym.Env:
        recorders.append(RecordEpisode(env, out / "videos", tag, seed, episodes))
        return recorders[-1]

    def one_env() -> gym.Env:
        return acting.make_env("rgb_array", record) if video else acting.make_env(None, None)

    envs = gym.vector.SyncVectorEnv([one_env] * min(acting.eval_envs, episodes),
                                    autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    try:
        result = evaluate(acting.actor, envs, episodes, seed, *acting.ref_scores, rng_seed=acting.eval_seed)
    finally:
        envs.close()
    videos = sorted((str(p.relative_to(run_dir)) for recorder in recorders for p in recorder.written),
                    key=lambda name: int(name.rsplit("_ep", 1)[1].removesuffix(".mp4")))
    record = {"run": str(run_dir), "checkpoint": path.name, "metric": acting.metric, "episodes": episodes,
              "seed": seed, "deterministic": deterministic, "seconds": round(time.perf_counter() - started, 2),
              "videos": videos, **result.as_dict()}
    out.mkdir(exist_ok=True)
    write_atomically(out / f"{tag}_{episodes}ep.json", json.dumps(strict_json(record), indent=2))
    return record


def is_export(folder: str | Path) -> bool:
    """Whether ``folder`` is an ``rlft-export`` artifact (``policy.onnx`` beside ``metadata.json``)."""
    return (Path(folder) / "policy.onnx").is_file() and (Path(folder) / "metadata.json").is_file()


def evaluate_export(folder: str | Path, episodes: int | None = None, seed: int | None = None,
                    video: bool = False) -> dict[str, Any]:
    """Evaluate an exported policy as a robot would run it: ``rlft.deploy`` (numpy and ONNX
    Runtime) in the task's raw env (its own observations and action bounds), episode ``i`` reset
    with ``seed + i``. Defaults: the exporting run's evaluation protocol when its folder is where
    the card says (``source.run``), else 10 episodes from seed 0. Written to ``<export>/evals/``."""
    from rlft.deploy import DeployedPolicy
    from rlft.envs.factory import make_task_env, resolve_task
    from rlft.runtime.evaluation import Episodes, score

    folder = Path(folder)
    metadata = json.loads((folder / "metadata.json").read_text())
    if "env" not in metadata:
        raise ValueError(f"{folder}/metadata.json names no env (an export from before 2026-12-08): export the run "
                         "again to evaluate it")
    run_dir = (folder / metadata["source"]["run"]).resolve()
    protocol = load_run_config(run_dir, action="read its evaluation protocol") if (run_dir / "config.yaml").is_file() \
        else None
    trainer = protocol.get("trainer") or protocol.get("loop") if protocol is not None else None
    episodes = episodes if episodes is not None else int(trainer.eval_episodes) if trainer is not None else 10
    seed = seed if seed is not None else int(trainer.eval_seed) if trainer is not None else 0
    task = resolve_task(metadata["env"]["task"])
    policy = DeployedPolicy(folder)
    out = folder / "evals"
    tag = f"export_seed{seed}"
    limit = metadata["env"].get("max_episode_steps")
    env = make_task_env(task, limit, {"render_mode": "rgb_array"} if video else None)
    if video:
        env = RecordEpisode(env, out / "videos", tag, seed, episodes)
    returns, lengths, successes, tracks = [], [], [], False
    started = time.perf_counter()
    try:
        for i in range(episodes):
            obs, _ = env.reset(seed=seed + i)
            policy.reset()
            total, length, done = 0.0, 0, False
            while not done:
                obs, reward, terminated, truncated, info = env.step(policy.act(obs))
                total, length, done = total + float(reward), length + 1, terminated or truncated
            tracks = tracks or "success" in info
            returns.append(total), lengths.append(length), successes.append(bool(info.get("success", False)))
    finally:
        env.close()
    refs = (task.ref_min_score, task.ref_max_score)
    result = score(Episodes(returns, lengths, successes, tracks), *refs)
    record = {"export": str(folder), "checkpoint": metadata["source"]["checkpoint"], "episodes": episodes,
              "seed": seed, "deterministic": True, "seconds": round(time.perf_counter() - started, 2),
              "videos": [str(p.relative_to(folder)) for p in getattr(env, "written", [])], **result.as_dict()}
    out.mkdir(exist_ok=True)
    write_atomically(out / f"{tag}_{episodes}ep.json", json.dumps(strict_json(record), indent=2))
    return record
