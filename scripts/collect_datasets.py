"""Write D4RL-style Minari datasets: SAC-expert recipes for MuJoCo locomotion tasks, a noisy
waypoint controller for the sparse-reward maze (``pointmaze_umaze``), and noisy scripted-expert
demonstrations for Meta-World tasks (``mw-*``) and Push-T (``pusht``, from pixels).

Examples (what produced the datasets shipped in ``data/minari``)::

    python -m rlft.scripts.collect_datasets --tasks hopper --kinds medium medium-replay
    python -m rlft.scripts.collect_datasets --tasks hopper --kinds medium medium-replay \
        --medium-target reference --kind-suffix=-local --sac-steps 1000000   # the D4RL-protocol medium
    python -m rlft.scripts.collect_datasets --tasks pointmaze_umaze --transitions 50000
    python -m rlft.scripts.collect_datasets --tasks mw-push mw-pick-place --episodes 10 --noise 0.3
    python -m rlft.scripts.collect_datasets --tasks pusht --episodes 20 --noise 0.0
    python -m rlft.scripts.collect_datasets --tasks cube-double-task1 cube-double-task2 --episodes 100
"""

from __future__ import annotations

import argparse
import json

import torch

from rlft.envs.registry import get_task
from rlft.offline.collection import DATASET_KINDS, CollectionConfig, collect
from rlft.offline.demos import DemoConfig, collect_demos
from rlft.offline.maze_collection import MazeCollectionConfig, collect_maze
from rlft.offline.ogbench_collection import OGBenchCollectionConfig, collect_ogbench


def main(argv: list[str] | None = None) -> None:
    defaults = CollectionConfig()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["hopper", "halfcheetah", "walker2d"])
    parser.add_argument("--kinds", nargs="+", default=list(DATASET_KINDS), choices=DATASET_KINDS)
    parser.add_argument("--out-dir", default=defaults.out_dir)
    parser.add_argument("--namespace", default=defaults.namespace)
    parser.add_argument("--version", type=int, default=defaults.version)
    parser.add_argument("--sac-steps", type=int, default=defaults.sac_steps)
    parser.add_argument("--learning-starts", type=int, default=defaults.sac_learning_starts)
    parser.add_argument("--snapshot-every", type=int, default=defaults.snapshot_every)
    parser.add_argument("--transitions", type=int, default=defaults.transitions)
    parser.add_argument("--medium-target", choices=("expert", "reference"), default=defaults.medium_target,
                        help="medium's return: a third of this run's best snapshot, or of D4RL's expert reference "
                             "score (SAC then stops once a snapshot reaches it)")
    parser.add_argument("--kind-suffix", default=defaults.kind_suffix, help="appended to each kind in the dataset ids")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--episodes", type=int, default=None,
                        help=f"Meta-World: demonstrations to keep (default {DemoConfig.episodes}); OGBench: play "
                             f"episodes of 1,001 steps (default {OGBenchCollectionConfig.episodes}; OGBench's: 1000)")
    parser.add_argument("--noise", type=float, default=DemoConfig.noise, help="Meta-World: expert action noise std")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    ogbench = [task for task in args.tasks if get_task(task).module == "ogbench"]
    if ogbench:  # one domain's play data serve all its tasks: generated once
        summary = collect_ogbench(OGBenchCollectionConfig(
            tasks=tuple(ogbench), episodes=args.episodes or OGBenchCollectionConfig.episodes, out_dir=args.out_dir,
            namespace=args.namespace, version=args.version, seed=args.seed))
        print(json.dumps(summary["datasets"], indent=2))
    for task in (task for task in args.tasks if task not in ogbench):
        if get_task(task).env_id in ("rlft/MetaWorld-v3", "gym_pusht/PushT-v0"):
            demos = collect_demos(DemoConfig(task=task, episodes=args.episodes or DemoConfig.episodes,
                                             noise=args.noise, seed=args.seed), args.out_dir, args.version)
            print(json.dumps(demos, indent=2))
            continue
        if get_task(task).module == "gymnasium_robotics":
            maze = collect_maze(MazeCollectionConfig(task=task, out_dir=args.out_dir, namespace=args.namespace,
                                                     version=args.version, transitions=args.transitions,
                                                     seed=args.seed))
            print(json.dumps(maze["dataset"], indent=2))
            continue
        summary = collect(
            CollectionConfig(
                task=task,
                out_dir=args.out_dir,
                namespace=args.namespace,
                version=args.version,
                kinds=tuple(args.kinds),
                sac_steps=args.sac_steps,
                sac_learning_starts=args.learning_starts,
                snapshot_every=args.snapshot_every,
                transitions=args.transitions,
                medium_target=args.medium_target,
                kind_suffix=args.kind_suffix,
                seed=args.seed,
            )
        )
        print(f"\n== {task}: SAC {args.sac_steps} steps in {summary['seconds']:.0f}s; "
              f"expert snapshot @ {summary['expert_snapshot_step']}, medium @ {summary['medium_snapshot_step']}")
        print(f"{'dataset':<36}{'episodes':>9}{'steps':>9}{'return':>16}{'norm. score':>13}")
        for info in summary["datasets"].values():
            print(f"{info['id']:<36}{info['episodes']:>9}{info['transitions']:>9}"
                  f"{info['return_mean']:>9.1f} ±{info['return_std']:>5.0f}{info['normalized_score_mean']:>13.1f}")
        print(json.dumps(summary["snapshots"]))


if __name__ == "__main__":
    main()
