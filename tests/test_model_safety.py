"""Model folders rlft refuses before transformers reads them (policies/model_files.py): weights that
are pickles (never unpickled: each payload here would create a marker file), damaged safetensors and
GGUF headers, and hub ids missing from the local cache (refused at once, with no network). Every
error is a ValueError or FileNotFoundError, which the rlft CLI prints as one line."""

from __future__ import annotations

import json
import pickle
import shutil
import socket
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from rlft.policies.llm import PICKLED_VALUE_HEAD_FILE, VALUE_HEAD_FILE, LLMPolicy
from rlft.policies.model_files import CorruptModelFileError, ModelNotFoundError, UnsafeModelFileError, check_gguf
from rlft.policies.tiny_lm import build_tiny_lm


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_lm(tmp_path_factory.mktemp("tiny_lm"), seed=0)


@pytest.fixture
def folder(tiny_lm: Path, tmp_path: Path) -> Path:
    """A copy of the tiny model this test may damage."""
    return Path(shutil.copytree(tiny_lm, tmp_path / "model"))


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    """The file a payload creates when it is unpickled; each test asserts it never appears."""
    return tmp_path / "payload_ran"


class _Payload:
    """Unpickling this object creates ``marker``: the proof that a pickle was loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def payload(marker: Path) -> bytes:
    """A pickled "state dict" that runs code when loaded."""
    return pickle.dumps({"model.embed_tokens.weight": _Payload(marker)})


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Every attempt to resolve a host or open a connection, refused and recorded."""
    attempts: list[object] = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return attempts


@pytest.fixture
def hub_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty Hugging Face cache, used instead of the user's."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_the_payload_runs_when_unpickled(marker: Path) -> None:
    pickle.loads(payload(marker))  # so the tests below, which find no marker, would see one
    assert marker.exists()


# ------------------------------------------------------------------------------ pickled weights
@pytest.mark.parametrize("files", [
    ["pytorch_model.bin"],
    ["pytorch_model.bin.index.json", "pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"],
    ["model.pt"],
    ["weights.pth"],
], ids=["bin", "bin-shards", "pt", "pth"])
def test_pickled_weights_are_refused_without_being_unpickled(folder: Path, marker: Path, files: list[str]) -> None:
    (folder / "model.safetensors").unlink()
    for name in files:
        (folder / name).write_bytes(payload(marker))
    with pytest.raises(UnsafeModelFileError, match="rlft never unpickles model files") as error:
        LLMPolicy.from_pretrained(folder)
    assert all(name in str(error.value) for name in files) and str(folder) in str(error.value)
    assert "save_pretrained(folder, safe_serialization=True)" in str(error.value)
    assert not marker.exists()


def test_safetensors_are_loaded_and_a_pickle_beside_them_is_not(folder: Path, marker: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    (folder / "pytorch_model.bin").write_bytes(payload(marker))
    load = AutoModelForCausalLM.from_pretrained
    asked: list[dict] = []
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", lambda *a, **kw: asked.append(kw) or load(*a, **kw))
    policy = LLMPolicy.from_pretrained(folder)
    assert [kw.get("use_safetensors") for kw in asked] == [True]
    saved = load_file(folder / "model.safetensors")["model.embed_tokens.weight"]
    assert torch.equal(policy.model.get_input_embeddings().weight, saved)
    assert not marker.exists()


def test_a_config_pointing_transformers_at_a_pickle_is_refused(folder: Path, marker: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "transformers_weights": "adapter_model.bin"}))
    (folder / "adapter_model.bin").write_bytes(payload(marker))  # the one pickle transformers would follow it to
    with pytest.raises(UnsafeModelFileError, match="config.json points transformers at adapter_model.bin "
                                                   "\\(transformers_weights\\), not at safetensors"):
        LLMPolicy.from_pretrained(folder)
    assert not marker.exists()


def test_an_adapter_saved_as_a_pickle_is_refused(folder: Path, marker: Path) -> None:
    (folder / "adapter_config.json").write_text("{}")  # peft would load adapter_model.bin into the model
    (folder / "adapter_model.bin").write_bytes(payload(marker))
    with pytest.raises(UnsafeModelFileError, match=f"no adapter_model.safetensors in {folder}, only pickles "
                                                   "\\(adapter_model.bin\\): rlft never unpickles model files"):
        LLMPolicy.from_pretrained(folder)
    assert not marker.exists()


def test_a_folder_without_weights_says_so(folder: Path) -> None:
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=f"{folder} has no weights: no model.safetensors nor "
                                                "model.safetensors.index.json"):
        LLMPolicy.from_pretrained(folder)


def test_a_missing_shard_is_named(folder: Path) -> None:
    (folder / "model.safetensors").rename(folder / "model-00001-of-00002.safetensors")
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    with pytest.raises(FileNotFoundError, match="names shards that are missing: model-00002-of-00002.safetensors"):
        LLMPolicy.from_pretrained(folder)


# ------------------------------------------------------------------------------ the value head
def test_the_value_head_is_saved_and_loaded_as_safetensors(folder: Path, tmp_path: Path) -> None:
    policy = LLMPolicy.from_pretrained(folder, value_head=True)
    policy.save_pretrained(tmp_path / "saved")
    saved = {p.name for p in (tmp_path / "saved").iterdir()}
    assert VALUE_HEAD_FILE in saved and PICKLED_VALUE_HEAD_FILE not in saved
    again = LLMPolicy.from_pretrained(tmp_path / "saved", value_head=True)
    hidden = torch.randn(3, policy.value_head.linear.in_features)
    assert torch.equal(policy.value_head(hidden), again.value_head(hidden))


def test_a_pickled_value_head_is_refused_without_being_unpickled(folder: Path, marker: Path) -> None:
    (folder / PICKLED_VALUE_HEAD_FILE).write_bytes(payload(marker))
    with pytest.raises(UnsafeModelFileError, match=f"{folder / PICKLED_VALUE_HEAD_FILE} is a pickle .* never "
                                                   "unpickles model files; convert it"):
        LLMPolicy.from_pretrained(folder, value_head=True)
    assert not marker.exists()


def test_a_truncated_value_head_is_refused(folder: Path, tmp_path: Path) -> None:
    LLMPolicy.from_pretrained(folder, value_head=True).save_pretrained(tmp_path / "saved")
    head = tmp_path / "saved" / VALUE_HEAD_FILE
    head.write_bytes(head.read_bytes()[:-4])
    with pytest.raises(CorruptModelFileError, match=f"{head}: tensor linear.weight lies at bytes 4..260, outside "
                                                    "the 256-byte data section: truncated"):
        LLMPolicy.from_pretrained(tmp_path / "saved", value_head=True)


# ------------------------------------------------------------------------------ safetensors headers
def _rewritten_header(data: bytes, change) -> bytes:
    """``data`` (a safetensors file) with its header JSON passed through ``change``."""
    (length,) = struct.unpack("<Q", data[:8])
    header = change(json.loads(data[8:8 + length]))
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data[8 + length:]


def _wrong_shape(header: dict) -> dict:
    name = next(n for n in header if n != "__metadata__")
    header[name]["shape"][0] += 1
    return header


def _overlap(header: dict) -> dict:
    name = next(n for n in header if n != "__metadata__")
    return {**header, "zz.copy": dict(header[name])}  # a second tensor on the same bytes


@pytest.mark.parametrize("damage, message", [
    (lambda data: data[:5], "is 5 bytes, shorter than the 8-byte header length"),
    (lambda data: data[:len(data) // 2], "outside the [0-9]+-byte data section: truncated"),
    (lambda data: struct.pack("<Q", 10**12) + data[8:], "declares a 1000000000000-byte header, but [0-9]+ bytes "
                                                        "follow the header length"),
    (lambda data: struct.pack("<Q", 16) + b"\xff\x00garbage-garbage" + data[24:], "header is not a JSON object"),
    (lambda data: _rewritten_header(data, lambda header: list(header)), "header is not a JSON object"),
    (lambda data: (lambda deep: struct.pack("<Q", len(deep)) + deep)(b"{\"a\":" + b"[" * 100_000 + b"]" * 100_000
                                                                      + b"}"), "header is not a JSON object"),
    (lambda data: _rewritten_header(data, _wrong_shape), "spans [0-9]+ bytes, but F32 x \\[[0-9]+, [0-9]+\\] is "
                                                         "[0-9]+ bytes"),
    (lambda data: _rewritten_header(data, _overlap), "starts at byte [0-9]+ of the data section, not at [0-9]+"),
], ids=["shorter-than-8-bytes", "truncated", "oversized-header", "garbage-header", "header-not-an-object",
        "header-nested-too-deep", "offsets-not-dtype-x-shape", "overlapping-tensors"])
def test_a_damaged_safetensors_file_is_refused_naming_it(folder: Path, damage, message: str) -> None:
    weights = folder / "model.safetensors"
    weights.write_bytes(damage(weights.read_bytes()))
    with pytest.raises(CorruptModelFileError, match=message) as error:
        LLMPolicy.from_pretrained(folder)
    assert str(weights) in str(error.value)


def test_a_header_over_safetensors_bound_is_refused_unread(folder: Path) -> None:
    weights = folder / "model.safetensors"
    with weights.open("r+b") as file:  # a sparse 200 MB file: its header length fits it, not the 100 MB bound
        file.write(struct.pack("<Q", 150_000_000))
        file.truncate(200_000_000)
    with pytest.raises(CorruptModelFileError, match=f"{weights} declares a 150000000-byte header, .* at most "
                                                    "100000000"):
        LLMPolicy.from_pretrained(folder)


# ------------------------------------------------------------------------------ GGUF
@pytest.fixture(scope="module")
def gguf_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A small valid GGUF file (two float tensors), written by the gguf package."""
    import gguf

    path = tmp_path_factory.mktemp("gguf") / "model.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_token_list(["a", "b", "c"])
    writer.add_tensor("a", np.arange(1000, dtype=np.float32))
    writer.add_tensor("b", np.arange(64, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes()


def test_an_intact_gguf_file_passes_the_check(gguf_bytes: bytes, tmp_path: Path) -> None:
    (tmp_path / "model.gguf").write_bytes(gguf_bytes)
    check_gguf(tmp_path / "model.gguf")


@pytest.mark.parametrize("damage, message", [
    (lambda data: b"PK\x03\x04" + data[4:], "is not a GGUF file: it starts with b'PK\\\\x03\\\\x04'"),
    (lambda data: data[:20], "is 20 bytes, but its GGUF header reads on to byte 24: truncated"),
    (lambda data: data[:100], "is 100 bytes, but its GGUF header reads on to byte [0-9]+: truncated"),
    (lambda data: data[:-10], "but tensor b ends at byte [0-9]+: truncated"),
], ids=["not-gguf", "truncated-counts", "truncated-metadata", "truncated-data"])
def test_a_damaged_gguf_file_is_refused_naming_it(gguf_bytes: bytes, tmp_path: Path, damage, message: str) -> None:
    gguf_file = tmp_path / "model.gguf"
    gguf_file.write_bytes(damage(gguf_bytes))
    with pytest.raises(CorruptModelFileError, match=message) as error:
        LLMPolicy.from_pretrained(tmp_path, gguf_file="model.gguf")
    assert str(gguf_file) in str(error.value)


# ------------------------------------------------------------------------------ hub ids
def test_a_hub_id_missing_from_the_cache_fails_at_once_offline(hub_cache: Path, no_network: list) -> None:
    with pytest.raises(ModelNotFoundError) as error:
        LLMPolicy.from_pretrained("rlft-test/absent")
    assert isinstance(error.value, FileNotFoundError)
    assert str(error.value).startswith(f"rlft-test/absent is no local folder and not in the Hugging Face cache "
                                       f"({hub_cache}); rlft downloads nothing unless asked")
    assert "`hf download rlft-test/absent`" in str(error.value)
    assert no_network == []


def test_a_hub_id_in_the_cache_loads_offline(hub_cache: Path, no_network: list, tiny_lm: Path) -> None:
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = hub_cache / "models--rlft-test--tiny"
    shutil.copytree(tiny_lm, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    from safetensors.torch import load_file

    policy = LLMPolicy.from_pretrained("rlft-test/tiny")
    saved = load_file(tiny_lm / "model.safetensors")["model.embed_tokens.weight"]
    assert torch.equal(policy.model.get_input_embeddings().weight, saved)
    assert no_network == []


def test_a_name_that_is_no_folder_nor_hub_id_says_so(hub_cache: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no model folder at not a model!, and it is no hub id either"):
        LLMPolicy.from_pretrained("not a model!")


def test_downloads_are_asked_for_and_never_fetch_pickles(hub_cache: Path, monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path: Path) -> None:
    import huggingface_hub

    asked: list[dict] = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo, **kw: asked.append(kw) or str(tmp_path))
    for gguf_file in (None, "model.Q4_1.gguf"):  # the empty "snapshot" is then refused: no config.json / GGUF file
        with pytest.raises(FileNotFoundError):
            LLMPolicy.from_pretrained("rlft-test/remote", gguf_file=gguf_file, download=True)
    assert [kw["local_files_only"] for kw in asked] == [False, False]
    assert {"*.bin", "*.pt", "*.pth", "pytorch_model.bin.index.json"} <= set(asked[0]["ignore_patterns"])
    assert asked[1]["allow_patterns"] == ["model.Q4_1.gguf"]
