"""``rlft-eval <run dir | export dir>``: evaluate a run folder's checkpoint as the run evaluated
itself (its episodes, seeds and env count unless told otherwise; the latest checkpoint reproduces
the last record of ``eval.json``), or an ``rlft-export`` folder as a robot runs it (ONNX Runtime in
the task's raw env, the run's episodes and seeds); write the record to the folder's ``evals/`` and,
with ``--video``, each episode as an MP4 (``pip install "rlft[video]"``).

    rlft-eval runs/demo/<timestamp>                              the latest checkpoint, the run's protocol
    rlft-eval runs/demo/<timestamp> --checkpoint pretrained      the policy before fine-tuning
    rlft-eval runs/demo/<timestamp> --episodes 50 --seed 7 --video
    rlft-eval runs/demo/<timestamp>/export                      the exported policy (rlft-export)
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="rlft-eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="an rlft run folder")
    parser.add_argument("--checkpoint", default="latest", help="latest (default), pretrained, step_<n> or a path")
    parser.add_argument("--episodes", type=int, help="episodes (default: the run's own evaluation's)")
    parser.add_argument("--seed", type=int, help="episode i is reset with seed + i (default: the run's eval seed)")
    parser.add_argument("--video", action="store_true", help="write each episode as an MP4 in <run>/evals/videos/")
    parser.add_argument("--stochastic", action="store_true",
                        help="sample the policy's exploration (seeded by the run's eval seed) instead of its mean")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    from rlft.api import evaluate  # torch loads here, not for --help
    from rlft.runtime.checkpoint import CorruptCheckpointError

    try:
        record = evaluate(args.run_dir, args.checkpoint, args.episodes, args.seed, args.video, args.device,
                          not args.stochastic)
    except (ValueError, FileNotFoundError, ImportError, CorruptCheckpointError) as error:
        print(f"rlft-eval: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    parts = [f"return {record['return_mean']:.1f} ± {record['return_std']:.1f}"]
    if record["normalized_score"] is not None and math.isfinite(record["normalized_score"]):
        parts.insert(0, f"normalised score {record['normalized_score']:.1f} ± {record['normalized_score_std']:.1f}")
    if record["success_rate"] is not None and math.isfinite(record["success_rate"]):
        parts.insert(0, f"success {100 * record['success_rate']:.1f}%")
    where = "export of " if "export" in record else ""
    print(f"{args.run_dir} [{where}{record['checkpoint']}]: {'   '.join(parts)}   ({record['episodes']} episodes from seed "
          f"{record['seed']}; ± over episodes)")
    for video in record["videos"]:
        print(f"  video: {args.run_dir / video}")


if __name__ == "__main__":
    main()
