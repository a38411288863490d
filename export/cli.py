"""``rlft-export <run dir> [--out DIR]``: a run folder's policy as an ONNX artifact."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rlft.export.artifact import ExportError, export_run
from rlft.runtime.checkpoint import CorruptCheckpointError


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="rlft-export", description=__doc__)
    parser.add_argument("run_dir", type=Path, help="an rlft run folder")
    parser.add_argument("--checkpoint", default="latest",
                        help="latest (default), pretrained (the end of pretraining), step_<n> or a checkpoint folder")
    parser.add_argument("--out", type=Path, help="output folder (default: <run dir>/export)")
    parser.add_argument("--format", choices=["onnx"], default="onnx")
    parser.add_argument("--seed", type=int, default=0, help="seed of the recorded episode used for the parity check")
    args = parser.parse_args(argv)
    try:
        out = export_run(args.run_dir, args.out, args.seed, args.checkpoint)
    except (ExportError, FileNotFoundError, CorruptCheckpointError) as error:
        print(f"rlft-export: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"exported to {out}")
    print((out / "report.md").read_text())


if __name__ == "__main__":
    main()
