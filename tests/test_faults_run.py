"""What the ``rlft`` command does when a run cannot start or cannot go on: two processes for one
folder, bad values, bad ``init_from`` sources, damaged configs and checkpoints, a full or
read-only disk, an interrupt during start-up. Each case asserts the one ``rlft: error:`` line
(naming the key or file), the exit status and what is on disk afterwards.

The command runs in this process (``rlft.scripts.main.main`` with ``sys.argv`` set): the same
code path as the console script, without paying for a new interpreter per case."""

from __future__ import annotations

import errno
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from rlft.runtime import checkpoint as checkpoint_module
from rlft.runtime.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from rlft.runtime.experiment import Experiment
from rlft.runtime.run_folder import RunFolderBusy, RunLock, claim_run_folder
from rlft.runtime.runner import PRETRAINED_CHECKPOINT, Runner
from rlft.scripts import main as cli

from test_cli import SMOKE
from test_experiment import smoke_config

QUICK = [*SMOKE, "trainer.offline_steps=40", "trainer.online_steps=60", "trainer.checkpoint_every=20",
         "trainer.eval_every=30", "trainer.keep_checkpoints=10"]


def rlft(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str]:
    """``rlft <args>`` in this process: (exit status, stderr).

    Hydra configures logging with ``logging.config.dictConfig``, which closes every handler that
    exists; in a test process that includes absl's (imported by dm_control in earlier tests),
    whose ``close`` closes the stream it was given: pytest's own capture stream, which then fails
    the whole session. The command is therefore run with a handler list of its own."""
    import logging
    import weakref

    monkeypatch.setattr(logging, "_handlerList", [])
    monkeypatch.setattr(logging, "_handlers", weakref.WeakValueDictionary())
    monkeypatch.setattr(sys, "argv", ["rlft", *args])
    capsys.readouterr()
    try:
        cli.main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code or 0
    return code, capsys.readouterr().err


def one_error_line(err: str) -> str:
    """The ``rlft: error:`` line, after checking that it is the only thing said and no traceback was."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("rlft: error: ")]
    assert len(lines) == 1, err
    return lines[0]


def finished_run(monkeypatch, capsys, dataset: Path, run_dir: Path, *overrides: str) -> Path:
    code, err = rlft(monkeypatch, capsys, *QUICK, f"dataset.source={dataset}", f"hydra.run.dir={run_dir}", *overrides)
    assert code == 0, err
    return run_dir


def snapshot(run_dir: Path) -> dict[str, bytes]:
    """Every file of a run folder but the claim file (its holder line changes), by content."""
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*"))
            if p.is_file() and p.name != ".rlft-run"}


# ------------------------------------------------------------------------------ one process per folder
def test_a_resume_of_a_folder_another_process_runs_is_refused_and_taken_over_once_it_dies(
        tmp_path, native_hopper, monkeypatch, capsys):
    run_dir = finished_run(monkeypatch, capsys, native_hopper, tmp_path / "run")
    before = snapshot(run_dir)
    holder = subprocess.Popen(  # another live process holds the folder, as a running rlft would
        [sys.executable, "-c", "import sys; from pathlib import Path; from rlft.runtime.run_folder import RunLock; "
                               f"lock = RunLock(Path({str(run_dir)!r})); lock.announce(); print('held', flush=True); "
                               "sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        code, err = rlft(monkeypatch, capsys, f"resume={run_dir}")
        assert code == 2
        busy = f"rlft: error: {run_dir} is in use by another rlft run (pid {holder.pid} "
        assert one_error_line(err).startswith(busy)
        assert snapshot(run_dir) == before  # nothing quarantined, rewritten or appended
    finally:
        holder.kill()  # kill -9: the kernel drops its lock, no stale claim is left to clear by hand
        holder.wait()
    code, err = rlft(monkeypatch, capsys, f"resume={run_dir}")
    assert code == 0, err


def test_the_loser_of_two_fresh_starts_is_told_a_live_run_holds_the_folder(tmp_path):
    run_dir = tmp_path / "run"
    winner = claim_run_folder(run_dir)
    (run_dir / "config.yaml").write_text("seed: 0\n")  # the winner has started writing
    with pytest.raises(RunFolderBusy, match="is in use by another rlft run") as refused:
        claim_run_folder(run_dir)
    assert "delete it" not in str(refused.value)
    winner.release()
    with pytest.raises(FileExistsError, match="already holds another run .*delete it"):  # and once it is gone
        claim_run_folder(run_dir)


def test_an_in_process_resume_holds_the_folder_until_the_run_ends(tmp_path, native_hopper):
    run_dir = tmp_path / "run"
    Experiment(smoke_config(native_hopper), run_dir).run()
    resumed = Experiment(smoke_config(native_hopper), run_dir)
    assert resumed.resume()
    with pytest.raises(RunFolderBusy):
        RunLock(run_dir)
    resumed.run()
    RunLock(run_dir).release()  # released at the end of the run


# ------------------------------------------------------------------------------ bad values
@pytest.mark.parametrize("override, message", [
    ("agent.hidden=[0]", "agent.hidden=[0]: must be widths >= 1"),
    ("agent.hidden=[-5]", "agent.hidden=[-5]: must be widths >= 1"),
    ("threads=-1", "threads=-1: must be >= 1"),
    ("threads=0", "threads=0: must be >= 1 (threads=null leaves torch's own default"),
    ("+bogus=1", "unknown top-level key(s) ['bogus']: no part of rlft reads them"),
])
def test_a_bad_value_is_one_line_and_leaves_no_run_folder_nor_runs_parent(
        tmp_path, native_hopper, monkeypatch, capsys, override, message):
    monkeypatch.chdir(tmp_path)
    code, err = rlft(monkeypatch, capsys, *SMOKE, f"dataset.source={native_hopper}", override)
    assert code == 2
    assert one_error_line(err).startswith(f"rlft: error: {message}")
    assert not (tmp_path / "runs").exists()


def test_threads_null_is_torch_s_default(tmp_path, native_hopper):
    assert Experiment(smoke_config(native_hopper, "threads=null"), tmp_path / "run")  # documented, not refused


def test_a_run_dir_that_is_a_file_is_named(tmp_path, monkeypatch, capsys):
    file = tmp_path / "notes.txt"
    file.write_text("mine")
    code, err = rlft(monkeypatch, capsys, *SMOKE, f"hydra.run.dir={file}")
    assert code == 2
    assert one_error_line(err) == (f"rlft: error: hydra.run.dir={file}: {file} is a file, not a folder; give a folder "
                                   "for the run (one that does not exist yet, or an empty one)")
    assert file.read_text() == "mine"


# ------------------------------------------------------------------------------ init_from
def test_refused_init_from_sources_leave_no_run_folder(tmp_path, native_hopper, monkeypatch, capsys):
    source = finished_run(monkeypatch, capsys, native_hopper, tmp_path / "source")
    other = save_checkpoint(tmp_path / "other-pipeline", 1, {"pipeline": "llm"})
    (tmp_path / "not-a-run").mkdir()
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / PRETRAINED_CHECKPOINT).mkdir()
    for name in ("state.pt", "manifest.json"):
        data = (source / PRETRAINED_CHECKPOINT / name).read_bytes()
        (damaged / PRETRAINED_CHECKPOINT / name).write_bytes(data[: len(data) // 2] if name == "state.pt" else data)
    cases = {
        tmp_path / "missing": "no such run folder or checkpoint",
        tmp_path / "not-a-run": "neither a run folder with a pretrained_checkpoint/ nor a checkpoint folder",
        other: "it holds a 'llm' run, not a 'o2o' one",
        damaged: f"{damaged / PRETRAINED_CHECKPOINT / 'state.pt'} has ",
        source: ("its networks do not fit this run's (in its DeterministicActor: net.0.weight is [32, 11] there "
                 "and [48, 11] here"),
    }
    monkeypatch.chdir(tmp_path)
    for init_from, message in cases.items():
        run_dir = tmp_path / "runs" / "refused"
        code, err = rlft(monkeypatch, capsys, *QUICK, f"dataset.source={native_hopper}", f"init_from={init_from}",
                         "agent.hidden=[48,48]" if init_from == source else "agent.hidden=[32,32]",
                         f"hydra.run.dir={run_dir}")
        assert code == 2, err
        assert message in one_error_line(err), (message, err)
        assert not (tmp_path / "runs").exists(), init_from  # neither the run folder nor its runs/ parent


# ------------------------------------------------------------------------------ damaged configs and checkpoints
@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_a_damaged_config_on_resume_is_named_and_changes_nothing(tmp_path, native_hopper, monkeypatch, capsys,
                                                                 damage):
    run_dir = finished_run(monkeypatch, capsys, native_hopper, tmp_path / "run")
    text = (run_dir / "config.yaml").read_text()
    (run_dir / "config.yaml").write_text("" if damage == "empty" else text[: len(text) // 3] + "\n  - [unclosed")
    before = snapshot(run_dir)
    code, err = rlft(monkeypatch, capsys, f"resume={run_dir}")
    assert code == 2
    assert one_error_line(err).startswith(f"rlft: error: cannot resume: {run_dir / 'config.yaml'} is ")
    assert snapshot(run_dir) == before


@pytest.mark.parametrize("state", [{"pipeline": "o2o", "counters": {"step": 1}}, "empty pipeline state"])
def test_a_wrong_structure_checkpoint_with_a_valid_manifest_is_quarantined_and_resume_falls_back(
        tmp_path, native_hopper, capsys, state):
    cfg = smoke_config(native_hopper)
    run_dir = tmp_path / "run"
    Experiment(cfg, run_dir).run()
    good = latest_checkpoint(run_dir / "checkpoints")
    if state == "empty pipeline state":  # the runner's keys are all there, the pipeline's are not
        state = {**load_checkpoint(good), "state": {}}
    bad = save_checkpoint(run_dir / "checkpoints", 10 ** 6, state)  # a manifest that matches: damage is not the issue
    resumed = Experiment(cfg, run_dir)
    assert resumed.resume()
    err = capsys.readouterr().err
    assert f"skipping a corrupt checkpoint: {bad}" in err and "falling back" in err
    assert (run_dir / "checkpoints" / f"corrupt-{bad.name}").is_dir()
    assert resumed.work == load_checkpoint(good)["counters"]["work"]


# ------------------------------------------------------------------------------ full and read-only disks
def _failing_writes(monkeypatch, code: int, after: int) -> None:
    """Checkpoint writes succeed ``after`` times (whole saves), then fail with ``OSError(code)``
    partway through the state file, as a disk filling up or remounted read-only would."""
    calls = {"saves": 0}
    original_write, original_save = checkpoint_module._RecordingFile.write, checkpoint_module.save_checkpoint

    def write(self, data):
        if calls["saves"] > after:
            raise OSError(code, __import__("os").strerror(code))
        return original_write(self, data)

    def save(*args, **kwargs):
        calls["saves"] += 1
        return original_save(*args, **kwargs)

    monkeypatch.setattr(checkpoint_module._RecordingFile, "write", write)
    monkeypatch.setattr("rlft.runtime.runner.save_checkpoint", save)


@pytest.mark.parametrize("code, what, fix", [
    (errno.ENOSPC, "no space left on device", "free space on that file system"),
    (errno.EROFS, "read-only file system", "make {run_dir} writable"),
])
def test_a_full_or_read_only_disk_mid_run_is_one_line_and_the_newest_checkpoint_stays_good(
        tmp_path, native_hopper, monkeypatch, capsys, code, what, fix):
    run_dir = tmp_path / "run"
    with monkeypatch.context() as patch:
        _failing_writes(patch, code, after=2)
        exit_code, err = rlft(patch, capsys, *QUICK, f"dataset.source={native_hopper}", f"hydra.run.dir={run_dir}")
    assert exit_code == 1
    newest = latest_checkpoint(run_dir / "checkpoints")
    line = one_error_line(err)
    assert line.startswith(f"rlft: error: {what} writing {run_dir / 'checkpoints'}/.tmp-")
    assert line.endswith(f": {fix.format(run_dir=run_dir)}, then continue with `rlft resume={run_dir}` "
                         f"(the newest checkpoint, {newest.name}, is intact)")
    assert [p.name for p in list_checkpoints(run_dir / "checkpoints")] == ["step_000000020", "step_000000040"]
    assert load_checkpoint(newest)["counters"]["work"] == 40
    assert not list((run_dir / "checkpoints").glob(".tmp-*"))
    exit_code, err = rlft(monkeypatch, capsys, f"resume={run_dir}")  # space freed: the run goes on from there
    assert exit_code == 0, err


def test_a_read_only_place_for_the_run_folder_is_said_before_hydra_tries(tmp_path, monkeypatch, capsys):
    class ReadOnly:
        f_flag = __import__("os").ST_RDONLY

    monkeypatch.setattr(cli.os, "access", lambda path, mode: False)
    monkeypatch.setattr(cli.os, "statvfs", lambda path: ReadOnly())
    code, err = rlft(monkeypatch, capsys, *SMOKE, f"hydra.run.dir={tmp_path / 'run'}")
    assert code == 2
    assert one_error_line(err) == (f"rlft: error: hydra.run.dir={tmp_path / 'run'}: cannot create {tmp_path / 'run'}: "
                                   f"{tmp_path} is on a read-only file system; choose a writable folder with "
                                   "hydra.run.dir=<folder>")
    assert not (tmp_path / "run").exists()
    code, _ = rlft(monkeypatch, capsys, *SMOKE, f"hydra.run.dir={tmp_path / 'run'}", "--cfg", "job")
    assert code == 0  # printing the config makes no folder, so it is not refused


# ------------------------------------------------------------------------------ interrupts
def test_ctrl_c_while_rlft_loads_says_so_and_leaves_no_folder(tmp_path, monkeypatch, capsys):
    class InterruptedImport:
        @staticmethod
        def find_spec(name, path=None, target=None):
            if name == "rlft.runtime.launch":
                raise KeyboardInterrupt
            return None

    monkeypatch.delitem(sys.modules, "rlft.runtime.launch")
    monkeypatch.setattr(sys, "meta_path", [InterruptedImport, *sys.meta_path])
    monkeypatch.chdir(tmp_path)
    code, err = rlft(monkeypatch, capsys, *SMOKE)
    assert code == 130 and "Traceback" not in err
    assert err.strip() == "interrupted before the run started: nothing was saved"
    assert not (tmp_path / "runs").exists()


def test_the_resume_hint_of_a_folder_with_spaces_and_accents_pastes(tmp_path, native_hopper, monkeypatch, capsys):
    run_dir = tmp_path / "sp dir ü" / "run"
    saves = {"n": 0}
    original = Runner.checkpoint

    def interrupted(self):
        path = original(self)
        saves["n"] += 1
        if saves["n"] == 3:
            raise KeyboardInterrupt
        return path

    with monkeypatch.context() as patch:
        patch.setattr(Runner, "checkpoint", interrupted)
        code, err = rlft(patch, capsys, *QUICK, f"dataset.source={native_hopper}", f"hydra.run.dir='{run_dir}'")
    assert code == 130
    command = err.strip().split("`")[1]
    assert command == f"rlft \"resume='{run_dir}'\""
    code, err = rlft(monkeypatch, capsys, *shlex.split(command)[1:])  # what a shell hands rlft when it is pasted
    assert code == 0, err


def test_a_budget_whose_buffer_does_not_fit_memory_says_how_much_it_needs(tmp_path, native_hopper, monkeypatch,
                                                                          capsys):
    monkeypatch.setattr("rlft.runtime.experiment.available_memory", lambda: 8 << 30)  # an 8 GiB machine
    code, err = rlft(monkeypatch, capsys, *SMOKE, f"dataset.source={native_hopper}", "trainer.online_steps=1e9",
                     f"hydra.run.dir={tmp_path / 'run'}")
    assert code == 2
    assert one_error_line(err) == ("rlft: error: trainer.online_steps=1000000000: the replay buffer (the dataset's "
                                   "400 rows + one per online step) needs 112.7 GiB and this machine has 8.0 GiB "
                                   "available; lower trainer.online_steps")
    assert not (tmp_path / "run").exists()


def test_a_refusal_raised_after_the_claim_leaves_no_run_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the transcript file is read in the SFT phase, after the folder was claimed
    code, err = rlft(monkeypatch, capsys, "experiment=llm/ppo/numberline", "loop.iterations=1",
                     "model.tiny={hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1}",
                     f"sft.transcripts={tmp_path / 'none.jsonl'}")
    assert code == 2
    assert one_error_line(err) == f"rlft: error: no transcript file at {tmp_path / 'none.jsonl'}"
    assert not (tmp_path / "runs").exists()


def test_bad_datasets_and_model_folders_are_one_line_through_the_command(tmp_path, monkeypatch, capsys):
    """The loaders' named errors (tests/test_dataset_safety.py, tests/test_model_safety.py) reach the
    user as one line, exit 2, with no run folder left behind."""
    import h5py
    import numpy as np
    from huggingface_hub import constants

    from rlft.policies.tiny_lm import build_tiny_lm

    monkeypatch.chdir(tmp_path)
    strings = tmp_path / "strings.hdf5"
    with h5py.File(strings, "w") as f:
        f.create_dataset("observations", data=np.full((5, 11), b"a"))
        for key, shape in (("actions", (5, 3)), ("rewards", (5,)), ("terminals", (5,))):
            f.create_dataset(key, data=np.zeros(shape, "f4"))
    bomb = tmp_path / "bomb.hdf5"
    with h5py.File(bomb, "w") as f:  # declares 88 TB in a few kilobytes
        f.create_dataset("observations", shape=(10 ** 12, 11), dtype="f8", chunks=(1024, 11), compression="gzip")
        for key, shape in (("actions", (5, 3)), ("rewards", (5,)), ("terminals", (5,))):
            f.create_dataset(key, data=np.zeros(shape, "f4"))
    pickled = build_tiny_lm(tmp_path / "pickled", seed=0)
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    llm = ["experiment=llm/ppo/numberline", "loop.iterations=1"]
    cases = [
        ([*SMOKE, f"dataset.source={strings}"], f"{strings}: 'observations' "),
        ([*SMOKE, f"dataset.source={bomb}"], f"{bomb}: 'observations' declares shape (1000000000000, 11)"),
        ([*llm, f"model.path={pickled}"], f"no model.safetensors nor model.safetensors.index.json in {pickled}"),
        ([*llm, "model.path=rlft-test/absent"], "rlft-test/absent is no local folder and not in the Hugging Face cache"),
    ]
    for args, message in cases:
        code, err = rlft(monkeypatch, capsys, *args)
        assert code == 2, err
        assert one_error_line(err).startswith(f"rlft: error: {message}"), (message, err)
        assert not (tmp_path / "runs").exists(), args
