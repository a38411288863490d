"""Fault injection: ``kill -9`` a short ``rlft`` run again and again, resume it each time, and check
that its final ``eval.json`` and ``metrics.csv`` equal those of an uninterrupted run of the same
seed (wall-clock columns and ``eval.json``'s ``compute`` aside).

    python -m rlft.scripts.fault_injection --kills 30 --out benchmarks/faults

Kills take turns between three moments:

* ``random``: a moment drawn uniformly over the reference run's duration;
* ``checkpoint``: while a checkpoint is being written (a ``checkpoints/.tmp-*`` folder exists);
* ``pretrained``: while ``pretrained_checkpoint/`` is being kept at the end of pretraining
  (``.tmp-pretrained_checkpoint`` exists), else at the first sight of it.

After every kill the script records whether the kill left a half-written folder behind (proof
that it struck mid-write), then resumes with ``rlft resume=<folder>``; a run killed before its
first checkpoint is started afresh in a new folder, as the refusal to resume it says to do. When
a run finishes with kills still to make, a new one starts. Every finished run is compared with
the reference; the results go to ``<out>/results.md`` and ``results.json``.

Then two more kinds of fault, each compared with the same reference:

* **two processes for one folder**: a run killed after its first checkpoint is resumed by two
  ``rlft resume=`` processes started at the same moment (``--concurrent`` rounds), and two fresh
  runs are started in one new folder at once. Exactly one of each pair may run (the other is
  refused by name), and the folder it finishes must equal the reference: no duplicated
  ``metrics.csv`` rows, no checkpoint save lost to the other's.
* **a full disk**: the run starts in a small tmpfs (half the reference folder's size) and must stop
  with one line saying so, its newest checkpoint intact and no ``.tmp-*`` left; after the tmpfs
  is grown (space freed) ``resume`` must finish it equal to the reference. The tmpfs is then
  remounted read-only: a resume and a fresh start there must each stop with one line. Mounting
  needs root (or a user namespace); where the platform refuses, the report says why it skipped.
"""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from rlft.scripts import bench_runs

RUN = ["experiment=smoke", "trainer.online_steps=1000", "progress=false"]  # SPOT, shipped hopper-weak data
WALL_CLOCK = ("steps_per_sec", "time/")  # metrics.csv columns that measure the machine, not the run
KINDS = ("random", "checkpoint", "pretrained")


@dataclass
class Kill:
    run: int  # which faulty run (0, 1, ...)
    kind: str
    seconds: float  # after the process started
    struck_mid_write: bool  # a .tmp-* folder was on disk right after the kill
    had_checkpoint: bool  # the run could be resumed afterwards


def _command(folder: Path, resume: bool, overrides: list[str]) -> list[str]:
    extra = [f"resume={folder}"] if resume else [*overrides, f"hydra.run.dir={folder}"]
    return [sys.executable, "-m", "rlft.scripts.main", *extra]


def _start(folder: Path, resume: bool, overrides: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with open(log, "a") as out:
        return subprocess.Popen(_command(folder, resume, overrides), stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)


def _temporary(folder: Path) -> list[Path]:
    return [*folder.glob(".tmp-*"), *(folder / "checkpoints").glob(".tmp-*")]


def _wait_for(proc: subprocess.Popen, kind: str, folder: Path, delay: float) -> None:
    """Return at the moment ``kind`` says to kill (or when the process has ended)."""
    deadline = time.perf_counter() + delay
    kept = (folder / "pretrained_checkpoint").is_dir()
    stale = set(_temporary(folder))  # left by an earlier kill; the next save removes them
    while proc.poll() is None:
        if kind == "random" and time.perf_counter() >= deadline:
            return
        if kind == "checkpoint" and set((folder / "checkpoints").glob(".tmp-*")) - stale:
            return
        if kind == "pretrained" and ((folder / ".tmp-pretrained_checkpoint").exists()
                                     or (not kept and (folder / "pretrained_checkpoint").is_dir())):
            return
        if kind == "pretrained" and kept:  # this run already kept it: strike a checkpoint write instead
            kind = "checkpoint"
        time.sleep(0.0002 if kind != "random" else 0.01)


def _metrics(folder: Path) -> list[dict[str, str]]:
    with open(folder / "metrics.csv", newline="") as f:
        return [{k: v for k, v in row.items() if not k.startswith(WALL_CLOCK)} for row in csv.DictReader(f)]


def _differences(run: Path, reference: Path) -> list[str]:
    problems = []
    ours, theirs = json.loads((run / "eval.json").read_text()), json.loads((reference / "eval.json").read_text())
    keys = sorted((set(ours) | set(theirs)) - {"compute"})  # compute: the wall-clock of the run, not its result
    problems += [f"eval.json[{key!r}] differs" for key in keys if ours.get(key) != theirs.get(key)]
    rows, expected = _metrics(run), _metrics(reference)
    if len(rows) != len(expected):
        problems.append(f"metrics.csv has {len(rows)} rows, the reference {len(expected)}")
    problems += [f"metrics.csv row {i} differs" for i, (a, b) in enumerate(zip(rows, expected)) if a != b][:5]
    return problems


def _error_line(log: Path) -> str:
    """The ``rlft: error:`` line a process wrote to its log (``""`` when none)."""
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.startswith("rlft: error:")]
    return lines[-1] if lines else ""


def _kill_after_first_checkpoint(folder: Path, overrides: list[str], log: Path) -> None:
    proc = _start(folder, False, overrides, log)
    while proc.poll() is None and not any((folder / "checkpoints").glob("step_*")):
        time.sleep(0.01)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _one_of_two(folder: Path, resume: bool, overrides: list[str], work: Path, reference: Path) -> dict:
    """Start two processes on ``folder`` at once; which ran, what the other was told, and whether
    the finished folder equals the reference."""
    logs = [work / f"{folder.name}.{side}.log" for side in "ab"]
    procs = [_start(folder, resume, overrides, log) for log in logs]
    codes = [proc.wait() for proc in procs]
    refused = [_error_line(log) for log, code in zip(logs, codes) if code != 0]
    problems = _differences(folder, reference) if 0 in codes else ["neither process finished the run"]
    return {"folder": folder.name, "exit_codes": codes, "refusals": refused,
            "one_ran": sorted(codes) in ([0, 2], [0, 0]), "overlapped": sorted(codes) == [0, 2],
            "equal": not problems, "differences": problems}


def concurrent(rounds: int, work: Path, overrides: list[str], reference: Path) -> list[dict]:
    """Two simultaneous resumes of a killed run, ``rounds`` times, and two simultaneous fresh starts."""
    results = []
    for index in range(rounds):
        folder = work / f"concurrent_{index}"
        _kill_after_first_checkpoint(folder, overrides, work / f"{folder.name}.log")
        results.append({"kind": "two resumes", **_one_of_two(folder, True, overrides, work, reference)})
        print(f"{folder.name}: {results[-1]}", flush=True)
    results.append({"kind": "two fresh starts", **_one_of_two(work / "concurrent_fresh", False, overrides, work,
                                                              reference)})
    print(f"concurrent_fresh: {results[-1]}", flush=True)
    return results


def _mount(point: Path, options: str) -> str | None:
    """Mount (or remount) a tmpfs at ``point``; the reason it cannot be done, or ``None``."""
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True, text=True)
    return None if proc.returncode == 0 else (proc.stderr.strip() or f"mount exited with {proc.returncode}")


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def full_disk(work: Path, overrides: list[str], reference: Path) -> dict:
    """A run on a tmpfs of half the reference folder's size, resumed once the tmpfs is grown;
    then a resume and a fresh start on it remounted read-only."""
    from rlft.runtime.checkpoint import latest_checkpoint, verify_checkpoint

    point = work / "small-disk"
    point.mkdir()
    size = _folder_bytes(reference) // 2
    why = _mount(point, f"size={size}")
    if why is not None:
        return {"skipped": f"cannot mount a tmpfs here ({why})"}
    try:
        folder, log = point / "run", work / "full-disk.log"
        code = _start(folder, False, overrides, log).wait()
        newest = latest_checkpoint(folder / "checkpoints")
        intact = newest is not None and verify_checkpoint(newest) is not None
        result = {"tmpfs_bytes": size, "exit_code": code, "message": _error_line(log),
                  "newest_checkpoint": newest.name if newest else None, "newest_intact": intact,
                  "temporary_left": [str(p.relative_to(folder)) for p in _temporary(folder)]}
        _mount(point, f"remount,size={4 * size}")
        result["resume_exit_code"] = _start(folder, True, overrides, log).wait()
        problems = _differences(folder, reference) if result["resume_exit_code"] == 0 else ["the resume failed"]
        result.update(equal=not problems, differences=problems)
        why = _mount(point, "remount,ro")
        if why is None:
            ro_log = work / "read-only.log"
            result["read_only_resume"] = (_start(folder, True, overrides, ro_log).wait(), _error_line(ro_log))
            result["read_only_start"] = (_start(point / "fresh", False, overrides, ro_log).wait(),
                                         _error_line(ro_log))
        else:
            result["read_only_skipped"] = why
        return result
    finally:
        subprocess.run(["umount", str(point)], check=False)


def inject(kills: int, work: Path, seed: int, overrides: list[str]) -> dict:
    rng = random.Random(seed)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    reference = work / "reference"
    started = time.perf_counter()
    _start(reference, False, overrides, work / "reference.log").wait()
    duration = time.perf_counter() - started
    print(f"reference run: {duration:.1f} s", flush=True)

    record: list[Kill] = []
    runs: list[dict] = []
    index, resume = 0, False
    folder = work / "run_0"
    while len(record) < kills or resume:
        proc = _start(folder, resume, overrides, work / f"{folder.name}.log")
        if len(record) < kills:
            kind = KINDS[len(record) % len(KINDS)]
            began, stale = time.perf_counter(), set(_temporary(folder))
            _wait_for(proc, kind, folder, rng.uniform(0.0, duration))
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                mid_write = bool(set(_temporary(folder)) - stale)
                resumable = any((folder / "checkpoints").glob("step_*"))
                record.append(Kill(index, kind, round(time.perf_counter() - began, 3), mid_write, resumable))
                print(f"kill {len(record)}/{kills}: {kind} at {record[-1].seconds:.2f} s"
                      f"{' mid-write' if mid_write else ''}", flush=True)
                if resumable:
                    resume = True
                else:  # nothing to resume: start afresh, as the refusal says
                    shutil.rmtree(folder, ignore_errors=True)  # a kill before Hydra made it leaves none
                    resume = False
                continue
        else:
            proc.wait()
        if proc.returncode != 0:
            raise RuntimeError(f"{folder} exited with {proc.returncode}; see {work / (folder.name + '.log')}")
        problems = _differences(folder, reference)
        runs.append({"folder": str(folder), "kills": sum(k.run == index for k in record), "equal": not problems,
                     "differences": problems})
        print(f"{folder.name}: {'equal to the reference' if not problems else problems}", flush=True)
        index, resume = index + 1, False
        folder = work / f"run_{index}"
    return {"kills": [asdict(k) for k in record], "runs": runs, "reference_seconds": round(duration, 1)}


def report(result: dict, command: str) -> str:
    kills = result["kills"]
    lines = ["# Fault injection: kill -9 and resume", "",
             f"Produced by `{command}`: an uninterrupted reference run ({result['reference_seconds']} s), then "
             f"{len(kills)} `kill -9`s of the same run, each followed by `rlft resume=<folder>`.", "",
             "| kind | kills | struck mid-write | left no checkpoint (restarted) |", "| --- | ---: | ---: | ---: |"]
    for kind in KINDS:
        mine = [k for k in kills if k["kind"] == kind]
        lines.append(f"| {kind} | {len(mine)} | {sum(k['struck_mid_write'] for k in mine)} "
                     f"| {sum(not k['had_checkpoint'] for k in mine)} |")
    lines += ["", "| finished run | kills survived | eval.json and metrics.csv equal to the reference |",
              "| --- | ---: | --- |"]
    lines += [f"| {Path(r['folder']).name} | {r['kills']} | {'yes' if r['equal'] else 'NO: ' + '; '.join(r['differences'])} |"
              for r in result["runs"]]
    lines += ["", "## Two processes for one folder", "",
              "| folder | started | exit codes | the other was told | finished folder equal to the reference |",
              "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r['folder']} | {r['kind']} at once | {r['exit_codes']} | "
              f"{'; '.join(r['refusals']) or '(both ran, one after the other)'} | "
              f"{'yes' if r['equal'] else 'NO: ' + '; '.join(r['differences'])} |" for r in result["concurrent"]]
    disk = result["full_disk"]
    lines += ["", "## A full disk, then a read-only one", ""]
    if "skipped" in disk:
        lines.append(f"Skipped: {disk['skipped']}.")
    else:
        lines += [f"- The run on a {disk['tmpfs_bytes'] / 2**20:.1f} MiB tmpfs exited {disk['exit_code']} with "
                  f"`` {disk['message']} ``",
                  f"- newest checkpoint afterwards: {disk['newest_checkpoint']} "
                  f"({'passes its checksum' if disk['newest_intact'] else 'DAMAGED'}); temporary folders left: "
                  f"{disk['temporary_left'] or 'none'}",
                  f"- after growing the tmpfs, `rlft resume=` exited {disk['resume_exit_code']}; the finished run "
                  f"equals the reference: {'yes' if disk['equal'] else 'NO: ' + '; '.join(disk['differences'])}"]
        if "read_only_skipped" in disk:
            lines.append(f"- read-only remount skipped: {disk['read_only_skipped']}")
        else:
            for what in ("resume", "start"):
                code, message = disk[f"read_only_{what}"]
                lines.append(f"- on the tmpfs remounted read-only, a {what} exited {code} with `` {message} ``")
    return "\n".join(lines) + "\n"


def _all_good(result: dict) -> bool:
    """Every finished run equal to the reference, the lock seen refusing at least one overlapping
    pair, the full disk stopped cleanly and the read-only disk refused (a platform that cannot
    mount a tmpfs skips that part, and the report says why)."""
    disk = result["full_disk"]
    read_only = [disk[key][0] for key in ("read_only_resume", "read_only_start") if key in disk]
    disk_good = "skipped" in disk or (disk["exit_code"] == 1 and disk["newest_intact"] and not disk["temporary_left"]
                                      and disk["equal"] and all(code != 0 for code in read_only))
    pairs = result["concurrent"]
    return (all(r["equal"] for r in result["runs"]) and all(r["equal"] and r["one_ran"] for r in pairs)
            and any(r["overlapped"] for r in pairs) and disk_good)


def main(argv: list[str] | None = None) -> None:
    parser = bench_runs.argument_parser(__doc__, out="benchmarks/faults", out_help="where the results go")
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--work", type=Path, default=Path("/tmp/rlft-fault-injection"),
                        help="where the runs go (emptied first)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--concurrent", type=int, default=3, help="rounds of two simultaneous resumes")
    parser.add_argument("overrides", nargs="*", default=RUN, help=f"the run's overrides (default: {' '.join(RUN)})")
    args = parser.parse_args(argv)
    command = bench_runs.command_line("rlft.scripts.fault_injection", argv)
    result = inject(args.kills, args.work, args.seed, args.overrides)
    result["concurrent"] = concurrent(args.concurrent, args.work, args.overrides, args.work / "reference")
    result["full_disk"] = full_disk(args.work, args.overrides, args.work / "reference")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"command": command, **result}, indent=2))
    (args.out / "results.md").write_text(report(result, command))
    print(report(result, command))
    if not _all_good(result):
        sys.exit(1)


if __name__ == "__main__":
    main()
