"""An export folder is untrusted input: ``rlft.deploy`` opens only files inside it and refuses every
bad value of its ``metadata.json`` with one named error, before it allocates anything.

Every refusal is checked for its type (``InvalidExportError``), for naming the ``metadata.json``
and the key path, and for having opened nothing outside the folder: an audit hook sees Python's
opens, and wrapped loaders see the graphs and tokenizers that ONNX Runtime and ``tokenizers`` open
in native code (the good folders' tests show that both are seen)."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tracemalloc
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import onnxruntime
import pytest
import tokenizers
from hydra import compose, initialize_config_module

from conftest import SHIPPED_HOPPER_WEAK
from rlft.deploy import DeployedPolicy, DeployedVLA, InvalidExportError
from rlft.deploy import metadata as checks
from rlft.export.artifact import export_run
from rlft.runtime.experiment import Experiment

DELETE = object()  # edit(): remove the key
_opened: list[Path] | None = None  # the opened fixture's record while a test runs


def _audit(event: str, args: tuple) -> None:
    if event == "open" and _opened is not None and isinstance(args[0], (str, bytes, os.PathLike)):
        _opened.append(Path(os.fsdecode(args[0])))


sys.addaudithook(_audit)  # a hook stays for the process: it records only inside the opened fixture


def small_export(run: Path) -> Path:
    """A real export, made in seconds: a TD3 run of one offline step on the shipped Hopper data."""
    with initialize_config_module("rlft.configs", version_base="1.3"):
        cfg = compose("config", ["experiment=smoke", "agent=td3", f"dataset.source={SHIPPED_HOPPER_WEAK}",
                                 "agent.hidden=[16,16]", "trainer.offline_steps=1", "trainer.online_steps=0",
                                 "trainer.eval_every=1", "trainer.checkpoint_every=1", "trainer.eval_episodes=1",
                                 "trainer.eval_envs=1"])
    Experiment(cfg, run).run()
    return export_run(run, run / "export")


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A good export, and for the tests that spoil a copy of it, another export outside that copy."""
    return small_export(tmp_path_factory.mktemp("run"))


@pytest.fixture
def folder(export: Path, tmp_path: Path) -> Path:
    """A private copy of the export, for one test to spoil."""
    return Path(shutil.copytree(export, tmp_path / "export"))


@pytest.fixture
def vla_folder(export: Path, tmp_path: Path) -> Path:
    """A VLA export's layout (metadata as ``rlft.export.vla.describe`` writes it, a real tokenizer;
    the graph is the control export's, which ONNX Runtime loads: these tests never run it)."""
    from tokenizers.models import WordLevel

    folder = tmp_path / "vla"
    (folder / "model").mkdir(parents=True)
    shutil.copy(export / "policy.onnx", folder)
    tokenizer = tokenizers.Tokenizer(WordLevel({"go": 0, "[UNK]": 1}, unk_token="[UNK]"))
    tokenizer.save(str(folder / "model" / "tokenizer.json"))
    (folder / "metadata.json").write_text(json.dumps({
        "format": "onnx", "file": "policy.onnx", "family": "llm/vla", "opset": 18,
        "prompt": {"before": "", "after": "", "image_placeholder": "", "tokenizer": "model/tokenizer.json",
                   "context": "turn"},
        "observation": {"text": "instruction", "image": {"name": "image", "shape": [8, 8, 3], "dtype": "uint8"}},
        "action": {"name": "action", "tokens": ["<act_0>", "<act_1>"], "discrete": True, "chunk": 1,
                   "reply_length": 1, "dtype": "int64", "frame_shape": []},
        "control": {"chunk": 1, "executed_steps": 1, "obs_history": 1}}))
    return folder


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Path]]:
    """Every file opened while the test runs: Python's (the audit hook) and the graphs and
    tokenizers that ONNX Runtime and ``tokenizers`` open in native code (their loaders wrapped)."""
    global _opened
    paths: list[Path] = []
    session, tokenizer = onnxruntime.InferenceSession, tokenizers.Tokenizer

    def recording_session(path: str, *args: Any, **kwargs: Any) -> onnxruntime.InferenceSession:
        paths.append(Path(path))
        return session(path, *args, **kwargs)

    class RecordingTokenizer:
        @staticmethod
        def from_file(path: str) -> tokenizers.Tokenizer:
            paths.append(Path(path))
            return tokenizer.from_file(path)

    monkeypatch.setattr(onnxruntime, "InferenceSession", recording_session)
    monkeypatch.setattr(tokenizers, "Tokenizer", RecordingTokenizer)
    _opened = paths
    yield paths
    _opened = None


def edit(folder: Path, changes: dict[str, Any]) -> None:
    """Set (or, with ``DELETE``, remove) dotted keys of ``folder``'s metadata.json."""
    path = folder / "metadata.json"
    metadata = json.loads(path.read_text())
    for key, value in changes.items():
        *parents, last = key.split(".")
        node = metadata
        for part in parents:
            node = node[part]
        if value is DELETE:
            del node[last]
        else:
            node[last] = value
    path.write_text(json.dumps(metadata))


def refused(load: Callable[[], Any], folder: Path, named: str, opened: list[Path]) -> str:
    """The message of the ``InvalidExportError`` that ``load()`` raises, checked to name
    ``folder``'s metadata.json and ``named``, after nothing outside ``folder`` was opened (from
    ``opened``, which it clears first: the test's own edits are no concern)."""
    opened.clear()
    with pytest.raises(InvalidExportError) as error:
        load()
    message = str(error.value)
    assert str(folder / "metadata.json") in message and named in message, message
    root = folder.resolve()
    assert [path for path in opened if not path.resolve().is_relative_to(root)] == []
    return message


def nested(depth: int) -> Any:
    """A value nested ``depth`` lists deep (parses, but is no count)."""
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def noise(shape: list[int], dtype: str = "float32") -> dict[str, Any]:
    return {"name": "noise", "kind": "noise", "shape": shape, "dtype": dtype, "distribution": "standard normal"}


def test_a_good_export_acts_and_opens_its_metadata_and_graph_only(folder: Path, opened: list[Path]) -> None:
    policy = DeployedPolicy(folder)
    own = {(folder / name).resolve() for name in ("metadata.json", "policy.onnx")}
    assert {path.resolve() for path in opened} == own
    golden = np.load(folder / "golden.npz")
    for observation, expected in zip(golden["observation"][:10], golden["action"][:10]):
        assert np.abs(policy.act(observation) - expected).max() <= 1e-5


@pytest.mark.parametrize("how", ["parent", "absolute", "symlink", "loop"])
def test_a_graph_outside_the_folder_is_refused_unopened(folder: Path, export: Path, opened: list[Path],
                                                        how: str) -> None:
    if how == "parent":  # enough ../ to reach / from the folder: the issue's ../../etc/passwd
        edit(folder, {"file": "../" * len(folder.resolve().parts) + "etc/passwd"})
    elif how == "absolute":  # another real export's graph, which would load and run
        edit(folder, {"file": str((export / "policy.onnx").resolve())})
    else:  # policy.onnx a link to that graph, or to itself
        (folder / "policy.onnx").unlink()
        (folder / "policy.onnx").symlink_to(folder / "policy.onnx" if how == "loop" else export / "policy.onnx")
    message = refused(lambda: DeployedPolicy(folder), folder, "file = ", opened)
    assert opened == [folder / "metadata.json"], opened
    expected = {"parent": "resolves to /etc/passwd", "absolute": "absolute paths are not",
                "symlink": f"resolves to {(export / 'policy.onnx').resolve()}", "loop": ""}
    assert expected[how] in message, message


def test_a_metadata_json_linked_from_outside_is_refused_unread(folder: Path, export: Path,
                                                               opened: list[Path]) -> None:
    (folder / "metadata.json").unlink()
    (folder / "metadata.json").symlink_to(export / "metadata.json")
    refused(lambda: DeployedPolicy(folder), folder, "outside the export folder", opened)
    assert opened == []


@pytest.mark.parametrize("content, named", [
    (b'{"control": ', "not readable JSON"),
    (b"\x80\x81", "not readable JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "RecursionError"),
    (b"[1, 2]", "not a JSON object"),
    (b'"policy.onnx"', "not a JSON object"),
    (b"null", "not a JSON object"),
], ids=["truncated", "not-utf8", "deeply-nested", "array", "string", "null"])
def test_metadata_json_must_be_one_json_object(folder: Path, opened: list[Path], content: bytes, named: str) -> None:
    (folder / "metadata.json").write_bytes(content)
    refused(lambda: DeployedPolicy(folder), folder, named, opened)


def test_an_oversized_metadata_json_is_refused_unread(folder: Path, opened: list[Path],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checks, "MAX_METADATA_BYTES", 100)
    refused(lambda: DeployedPolicy(folder), folder, "MAX_METADATA_BYTES = 100", opened)
    assert opened == []


@pytest.mark.parametrize("changes, named", [
    ({"control.obs_history": 10**9}, "control.obs_history"),
    ({"control.chunk": 2**40}, "control.chunk"),
    ({"observation.frame_shape": [2**16, 2**16]}, "observation.frame_shape"),
    ({"control.obs_history": 1024, "observation.frame_shape": [2**17]}, "observation.frame_shape"),
    ({"observation.frame_shape": [1] * 100}, "observation.frame_shape"),
    ({"action.frame_shape": [2**27]}, "action.frame_shape"),
    ({"inputs": [noise([2**20, 2**20])]}, "inputs[0].shape"),
    ({"inputs": [{"name": "s", "kind": "state", "shape": [2**30], "dtype": "float64", "output": "s_next"}]},
     "inputs[0].shape"),
], ids=["history", "chunk", "frame", "frame-times-history", "rank", "action", "noise", "state"])
def test_declared_sizes_are_bounded_before_anything_is_allocated(folder: Path, opened: list[Path],
                                                                 changes: dict[str, Any], named: str) -> None:
    edit(folder, changes)
    tracemalloc.start()
    try:
        refused(lambda: DeployedPolicy(folder), folder, f"{named} = ", opened)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**24, peak  # 16 MiB: nothing of the declared size was allocated


@pytest.mark.parametrize("changes, named", [
    ({"control.obs_history": "2"}, "control.obs_history = '2'"),
    ({"control.obs_history": True}, "control.obs_history = True"),
    ({"control.obs_history": 1.5}, "control.obs_history = 1.5"),
    ({"control.obs_history": nested(500)}, "control.obs_history = [[[[[["),
    ({"control.chunk": 0}, "control.chunk = 0"),
    ({"control.executed_steps": 2}, "control.executed_steps = 2 is refused; allowed: a whole number from 1 to 1 "
                                    "(control.chunk)"),
    ({"control": DELETE}, "control is missing"),
    ({"control.chunk": DELETE}, "control.chunk is missing"),
    ({"control": [1, 2]}, "control = [1, 2]"),
    ({"observation.frame_shape": [11, -1]}, "observation.frame_shape = [11, -1]"),
    ({"observation.frame_shape": "11"}, "observation.frame_shape = '11'"),
    ({"observation.name": 5}, "observation.name = 5"),
    ({"observation.layout": [{"key": 3, "shape": [11]}]}, "observation.layout[0].key = 3"),
    ({"observation.layout": [{"key": "a", "shape": [5]}]}, "observation.layout = "),
    ({"action.name": DELETE}, "action.name is missing"),
    ({"inputs": {"noise": 1}}, "inputs = {'noise': 1}"),
    ({"inputs": [dict(noise([2]), kind="magic")]}, "inputs[0].kind = 'magic'"),
    ({"inputs": [noise([2], dtype="object")]}, "inputs[0].dtype = 'object'"),
    ({"inputs": [dict(noise([2]), kind="state")]}, "inputs[0].output is missing"),
    ({"file": 7}, "file = 7"),
    ({"family": "llm/vla"}, "run a VLA with rlft.deploy.DeployedVLA"),
], ids=["string", "bool", "float", "nested", "zero", "executed-over-chunk", "no-control", "no-chunk", "control-list",
        "negative-dim", "shape-string", "name-int", "layout-key", "layout-size", "no-action-name", "inputs-object",
        "input-kind", "input-dtype", "state-output", "file-int", "vla-family"])
def test_bad_values_are_refused_by_name(folder: Path, opened: list[Path], changes: dict[str, Any], named: str) -> None:
    edit(folder, changes)
    refused(lambda: DeployedPolicy(folder), folder, named, opened)


def test_metadata_given_to_over_is_checked_too(folder: Path) -> None:
    metadata = json.loads((folder / "metadata.json").read_text())
    metadata["control"]["chunk"] = -1
    with pytest.raises(InvalidExportError, match=r"the metadata given to DeployedPolicy.over: control.chunk = -1"):
        DeployedPolicy.over(metadata, session=None)


def test_a_graph_returning_another_action_size_than_declared_is_refused_by_name(folder: Path) -> None:
    edit(folder, {"action.frame_shape": [4]})  # the graph returns 3 values
    policy = DeployedPolicy(folder)
    with pytest.raises(InvalidExportError, match=r"metadata.json: the graph returned 3 action values, control.chunk "
                                                 r"and action.frame_shape declare \(1, 4\)"):
        policy.act(np.zeros(11))


def test_a_good_vla_folder_loads_and_opens_its_own_files_only(vla_folder: Path, opened: list[Path]) -> None:
    policy = DeployedVLA(vla_folder)
    assert {path.resolve() for path in opened} == {(vla_folder / name).resolve() for name in
                                                   ("metadata.json", "policy.onnx", "model/tokenizer.json")}
    assert policy.prompt_ids("go").tolist() == [[0]]


@pytest.mark.parametrize("how", ["parent", "absolute", "symlink"])
def test_a_vla_tokenizer_outside_the_folder_is_refused_unopened(vla_folder: Path, tmp_path: Path,
                                                                opened: list[Path], how: str) -> None:
    elsewhere = tmp_path / "elsewhere.json"  # a real tokenizer outside the folder
    shutil.copy(vla_folder / "model" / "tokenizer.json", elsewhere)
    if how == "parent":
        edit(vla_folder, {"prompt.tokenizer": "model/" + "../" * len(vla_folder.resolve().parts) + "etc/passwd"})
    elif how == "absolute":
        edit(vla_folder, {"prompt.tokenizer": str(elsewhere)})
    else:
        (vla_folder / "model" / "tokenizer.json").unlink()
        (vla_folder / "model" / "tokenizer.json").symlink_to(elsewhere)
    refused(lambda: DeployedVLA(vla_folder), vla_folder, "prompt.tokenizer = ", opened)
    assert opened == [vla_folder / "metadata.json"], opened


@pytest.mark.parametrize("changes, named", [
    ({"family": "o2o/sac"}, "family = 'o2o/sac' is refused; allowed: 'llm/vla' (a control policy: run it with "
                            "rlft.deploy.DeployedPolicy)"),
    ({"file": "/etc/passwd"}, "file = '/etc/passwd'"),
    ({"prompt": DELETE}, "prompt is missing"),
    ({"prompt.before": None}, "prompt.before = None"),
    ({"observation.image.shape": [2**16, 2**16, 3]}, "observation.image.shape = [65536, 65536, 3]"),
    ({"action.chunk": 10**9}, "action.chunk = 1000000000"),
    ({"action.frame_shape": [2**30]}, "action.frame_shape = [1073741824]"),
    ({"action.tokens": "<act_0>"}, "action.tokens = '<act_0>'"),
], ids=["family", "file", "prompt", "before", "image", "chunk", "frame", "tokens"])
def test_bad_vla_values_are_refused_by_name(vla_folder: Path, opened: list[Path], changes: dict[str, Any],
                                            named: str) -> None:
    edit(vla_folder, changes)
    refused(lambda: DeployedVLA(vla_folder), vla_folder, named, opened)


@pytest.mark.parametrize("indices", [[2], [-1]])
def test_a_vla_graph_choosing_a_token_the_metadata_lacks_is_refused_by_name(vla_folder: Path,
                                                                            indices: list[int]) -> None:
    policy = DeployedVLA(vla_folder)
    with pytest.raises(InvalidExportError, match=rf"the graph chose action tokens \[{indices[0]}\], action.tokens "
                                                 "has 2"):
        policy.reply(indices)
