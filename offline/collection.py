"""D4RL-style dataset collection with a stable-baselines3 SAC expert, written in Minari format.

The recipe follows D4RL (Fu et al. 2020, Sec. 5 "Gym-MuJoCo"): train an online SAC agent,
then write

* ``random``        -- rollouts of a uniformly random policy,
* ``medium``        -- rollouts of the SAC snapshot whose return is closest to one third of
  the expert's (D4RL: "a policy trained to approximately 1/3 the performance of the expert"),
* ``medium-replay`` -- every transition SAC saw during training up to that snapshot,
* ``expert``        -- rollouts of the best SAC snapshot.

``medium_target="reference"`` is the D4RL-protocol variant (``rlft/<task>/medium-local``): SAC
trains until a snapshot's deterministic return reaches ``medium_fraction`` of the task's D4RL
expert reference return (``TaskSpec.ref_max_score``), and that snapshot is *medium*; training
stops there, so ``medium-replay`` is the whole run's experience. ``"expert"`` (the default, the
first shipped hopper set) takes the fraction of this run's own best snapshot instead.

Rollouts sample from the stochastic SAC policy, as D4RL's do. Each dataset is written with
Minari's own writer (``minari.create_dataset_from_buffers``) under ``<out_dir>/<namespace>/<task>/<kind>-v<version>``,
so ``minari.load_dataset`` and :func:`rlft.offline.load_dataset` both read it.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from rlft.envs.factory import make_task_env
from rlft.envs.registry import get_task
from rlft.offline.recording import (
    EpisodeRecorder,
    evaluate_policy,
    prepare_output,
    rollout_episodes,
    write_minari_dataset,
)

DATASET_KINDS = ("random", "medium", "medium-replay", "expert")


@dataclass
class CollectionConfig:
    """What to collect for one task."""

    task: str = "hopper"  # registered task name (rlft.envs.registry)
    out_dir: str = "data/minari"  # root folder; datasets land in <out_dir>/<namespace>/<task>/<kind>-v<version>
    namespace: str = "rlft"  # Minari namespace of the written datasets
    version: int = 0  # dataset version suffix
    kinds: tuple[str, ...] = DATASET_KINDS  # which datasets to write
    sac_steps: int = 200_000  # environment steps of SAC training (D4RL used 1M; CPU budget)
    sac_learning_starts: int = 5_000  # uniform-random steps before SAC updates
    snapshot_every: int = 5_000  # steps between saved policy snapshots
    snapshot_eval_episodes: int = 5  # deterministic episodes to score each snapshot
    medium_fraction: float = 1.0 / 3.0  # medium snapshot targets this fraction of the expert return
    medium_target: str = "expert"  # "expert": of this run's best snapshot; "reference": of D4RL's expert score
    kind_suffix: str = ""  # appended to each kind in the dataset ids (e.g. "-local": rlft/hopper/medium-local-v0)
    transitions: int = 100_000  # transitions per rollout dataset (random, medium, expert)
    seed: int = 0
    sac_kwargs: dict = field(default_factory=dict)  # extra stable_baselines3.SAC arguments


@dataclass
class _Snapshot:
    step: int
    actor_state: dict
    eval_return: float = float("nan")


def collect(cfg: CollectionConfig) -> dict:
    """Train the SAC expert, write the requested datasets and return a summary dict."""
    from stable_baselines3 import SAC
    from stable_baselines3.common.callbacks import BaseCallback

    unknown = set(cfg.kinds) - set(DATASET_KINDS)
    if unknown:
        raise ValueError(f"unknown dataset kinds {sorted(unknown)}; choose from {DATASET_KINDS}")
    if cfg.medium_target not in ("expert", "reference"):
        raise ValueError(f"medium_target={cfg.medium_target!r}; choose 'expert' or 'reference'")
    if cfg.medium_target == "reference" and "expert" in cfg.kinds:
        raise ValueError("medium_target='reference' stops SAC at the medium snapshot: it writes no 'expert' data")
    task = get_task(cfg.task)
    out_dir = Path(cfg.out_dir).resolve()
    dataset_ids = {k: f"{cfg.namespace}/{task.name}/{k}{cfg.kind_suffix}-v{cfg.version}" for k in cfg.kinds}
    prepare_output(out_dir, dataset_ids.values())
    torch.manual_seed(cfg.seed)
    started = time.time()

    train_env = EpisodeRecorder(make_task_env(task))
    train_env.reset(seed=cfg.seed)
    train_env.action_space.seed(cfg.seed)
    sac_kwargs = {"learning_starts": cfg.sac_learning_starts, "seed": cfg.seed, "device": "cpu", "verbose": 0}
    sac_kwargs.update(cfg.sac_kwargs)
    model = SAC("MlpPolicy", train_env, **sac_kwargs)
    snapshots: list[_Snapshot] = []
    eval_env = make_task_env(task)
    reference_target = cfg.medium_fraction * task.ref_max_score if cfg.medium_target == "reference" else None

    class _SnapshotCallback(BaseCallback):
        def _on_step(self) -> bool:
            if self.num_timesteps % cfg.snapshot_every:
                return True
            snapshot = _Snapshot(self.num_timesteps, copy.deepcopy(model.policy.actor.state_dict()))
            snapshots.append(snapshot)
            if reference_target is None:
                return True
            snapshot.eval_return = evaluate_policy(eval_env, policy_fn(snapshot, True), cfg.snapshot_eval_episodes,
                                                   10_000)
            print(f"step {snapshot.step}: return {snapshot.eval_return:.1f} (target {reference_target:.1f})",
                  flush=True)
            return snapshot.eval_return < reference_target  # False stops training: medium is reached

    def policy_fn(snapshot: _Snapshot, deterministic: bool) -> Callable[[np.ndarray], np.ndarray]:
        actor = copy.deepcopy(model.policy.actor)
        actor.load_state_dict(snapshot.actor_state)
        actor.eval()

        def act(obs: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                obs_t = torch.as_tensor(obs, dtype=torch.float32).unsqueeze(0)
                action = actor(obs_t, deterministic=deterministic)
            return model.policy.unscale_action(action.squeeze(0).numpy())

        return act

    model.learn(cfg.sac_steps, callback=_SnapshotCallback(), progress_bar=True)
    if not snapshots:
        raise ValueError(f"sac_steps={cfg.sac_steps} < snapshot_every={cfg.snapshot_every}: no snapshot was taken")
    for snap in tqdm(snapshots, desc="scoring snapshots", leave=False):
        if np.isnan(snap.eval_return):
            snap.eval_return = evaluate_policy(eval_env, policy_fn(snap, True), cfg.snapshot_eval_episodes, 10_000)
    expert = max(snapshots, key=lambda s: s.eval_return)
    if reference_target is None:
        target = task.ref_min_score + cfg.medium_fraction * (expert.eval_return - task.ref_min_score)
        medium = min(snapshots, key=lambda s: abs(s.eval_return - target))
    elif expert.eval_return < reference_target:
        raise RuntimeError(f"{task.name}: SAC's best snapshot returned {expert.eval_return:.1f} in {cfg.sac_steps} "
                           f"steps, short of the medium target {reference_target:.1f} ({cfg.medium_fraction:.3g} of "
                           f"D4RL's expert {task.ref_max_score}); raise --sac-steps")
    else:
        medium = snapshots[-1]  # the first snapshot to reach the target: training stopped there

    episodes: dict[str, list[dict[str, np.ndarray]]] = {}
    rng = np.random.default_rng(cfg.seed)
    action_space = eval_env.action_space
    for kind in cfg.kinds:
        if kind == "random":
            act = lambda _obs: rng.uniform(action_space.low, action_space.high).astype(np.float32)  # noqa: E731
            episodes[kind] = rollout_episodes(eval_env, act, cfg.transitions, cfg.seed + 1, kind)
        elif kind == "medium":
            episodes[kind] = rollout_episodes(eval_env, policy_fn(medium, False), cfg.transitions, cfg.seed + 2, kind)
        elif kind == "expert":
            episodes[kind] = rollout_episodes(eval_env, policy_fn(expert, False), cfg.transitions, cfg.seed + 3, kind)
        else:
            n = sum(1 for end in train_env.episode_end_steps if end <= medium.step)
            episodes[kind] = train_env.episodes[:n]

    summary: dict = {
        "task": task.name,
        "env_id": task.env_id,
        "config": asdict(cfg),
        "snapshots": [{"step": s.step, "eval_return": s.eval_return} for s in snapshots],
        "expert_snapshot_step": expert.step,
        "medium_snapshot_step": medium.step,
        "datasets": {},
    }
    for kind, eps in episodes.items():
        summary["datasets"][kind] = write_minari_dataset(
            dataset_ids[kind],
            eps,
            task,
            out_dir,
            algorithm_name=f"SB3-SAC ({kind})",
            description=(
                f"D4RL-style '{kind}' dataset for {task.env_id}, collected by rlft.offline.collection "
                + (f"(SAC {cfg.sac_steps} steps, medium snapshot at step {medium.step}, expert at step {expert.step})."
                   if reference_target is None else
                   f"(SAC trained until a snapshot returned {cfg.medium_fraction:.3g} of D4RL's expert score "
                   f"{task.ref_max_score}: step {medium.step}, return {medium.eval_return:.1f}).")
            ),
            env_spec=eval_env.spec,  # keeps the gymnasium.make kwargs of registered tasks (e.g. DMC domain/task)
        )
    summary["seconds"] = time.time() - started
    summary_path = out_dir / cfg.namespace / task.name / f"collection{cfg.kind_suffix}-v{cfg.version}.json"
    summary_path.parent.mkdir(parents=True, exist_ok=True)
    summary_path.write_text(json.dumps(summary, indent=2))
    return summary
