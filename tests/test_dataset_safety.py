"""Opening a dataset runs nothing it names and allocates nothing it only declares: Minari metadata
that names code, HDF5 files that declare far more than they store, and arrays that are not numbers
are each refused with one DatasetError naming the file and the key, before anything is read."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from rlft.offline import safety
from rlft.offline.dataset import DatasetError
from rlft.offline.loaders import NATIVE_FORMAT, load_dataset, load_minari

from conftest import REPO_ROOT
from test_faults import _minari

HUGE = (10**12, 11)  # 88 TB of float64: no machine allocates it, so the code before the checks failed fast


# ------------------------------------------------------------------------- Minari metadata
def _hopper_minari(root: Path, episodes, name: str = "t/hopper/evil-v0") -> Path:
    """A Minari dataset of Hopper-v5 written by Minari itself, under ``root`` (MINARI_DATASETS_PATH)."""
    return _minari(root, episodes, "Hopper-v5", name)


def _edit_metadata(folder: Path, drop_spaces: bool = True, **changes) -> Path:
    """Rewrite ``folder``'s metadata.json with ``changes`` (an ``env_spec``/``eval_env_spec`` change is
    a dict merged into that spec) and, by default, without its spaces: then Minari builds the
    environment from ``env_spec`` to find them. Returns the metadata file."""
    path = folder / "data" / "metadata.json"
    metadata = json.loads(path.read_text())
    if drop_spaces:
        del metadata["observation_space"], metadata["action_space"]
    for key, value in changes.items():
        metadata[key] = json.dumps({**json.loads(metadata[key]), **value}) if key.endswith("env_spec") else value
    path.write_text(json.dumps(metadata))
    return path


def _runs(marker: Path) -> dict:
    return {"os:system": {"command": f"touch {marker}"}, "subprocess:getoutput": {"cmd": f"touch {marker}"}}


CODE_IN_SPEC = {  # case -> (key the error names, metadata change given the marker file)
    "env_spec os:system": ("env_spec.entry_point", lambda m: {"env_spec": {"entry_point": "os:system",
                                                                           "kwargs": _runs(m)["os:system"]}}),
    "env_spec subprocess:getoutput": ("env_spec.entry_point", lambda m: {"env_spec": {
        "entry_point": "subprocess:getoutput", "kwargs": _runs(m)["subprocess:getoutput"]}}),
    "eval_env_spec os:system": ("eval_env_spec.entry_point", lambda m: {"eval_env_spec": {
        "entry_point": "os:system", "kwargs": _runs(m)["os:system"]}}),
    "eval_env_spec subprocess:getoutput": ("eval_env_spec.entry_point", lambda m: {"eval_env_spec": {
        "entry_point": "subprocess:getoutput", "kwargs": _runs(m)["subprocess:getoutput"]}}),
    "wrapper": ("env_spec.additional_wrappers[0].entry_point", lambda m: {"env_spec": {"additional_wrappers": [
        {"name": "X", "entry_point": "subprocess:getoutput", "kwargs": _runs(m)["subprocess:getoutput"]}]}}),
    "unregistered id": ("env_spec.id", lambda m: {"env_spec": {"id": "Evil-v0", "entry_point": "os:system",
                                                               "kwargs": _runs(m)["os:system"]}}),
}


@pytest.mark.parametrize("case", list(CODE_IN_SPEC))
def test_a_minari_env_spec_that_names_code_is_refused_before_minari_builds_it(case, tmp_path, hopper_episodes,
                                                                              monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    key, change = CODE_IN_SPEC[case]
    marker = tmp_path / "marker"
    folder = _hopper_minari(tmp_path, hopper_episodes)
    metadata = _edit_metadata(folder, **change(marker))
    with pytest.raises(DatasetError) as err:
        load_dataset(folder)
    assert f"{metadata}: {key} is " in str(err.value)
    assert not marker.exists()


@pytest.mark.parametrize("download", [False, True])
def test_a_minari_id_is_checked_before_minari_sees_its_folder(download, tmp_path, hopper_episodes, monkeypatch):
    """By id, from the local root or just downloaded (Minari's ``load_dataset`` would open a
    download straight away)."""
    from minari.storage import hosting

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    marker = tmp_path / "marker"
    folder = _hopper_minari(tmp_path, hopper_episodes)
    metadata = _edit_metadata(folder, env_spec={"entry_point": "os:system", "kwargs": _runs(marker)["os:system"]})
    if download:  # the folder arrives with the download
        folder.rename(tmp_path / "remote")
        monkeypatch.setattr(hosting, "download_dataset", lambda dataset_id: (tmp_path / "remote").rename(folder))
    with pytest.raises(DatasetError, match=f"{metadata}: env_spec.entry_point is 'os:system'"):
        load_minari("t/hopper/evil-v0", download=download)
    assert not marker.exists()


def test_the_rlft_command_refuses_a_minari_dataset_that_names_code_in_one_line(tmp_path, hopper_episodes, monkeypatch):
    from test_cli import SMOKE

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    marker = tmp_path / "marker"
    metadata = _edit_metadata(_hopper_minari(tmp_path, hopper_episodes),
                              env_spec={"entry_point": "os:system", "kwargs": _runs(marker)["os:system"]})
    folder = metadata.parent.parent
    proc = subprocess.run([sys.executable, "-m", "rlft.scripts.main", *SMOKE, f"dataset.source={folder}",
                           f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines()[0].startswith(f"rlft: error: {metadata}: env_spec.entry_point is 'os:system'")
    assert "Traceback" not in proc.stderr
    assert not marker.exists() and not (tmp_path / "run").exists()


def test_a_minari_dataset_without_its_spaces_is_refused(tmp_path, hopper_episodes, monkeypatch):
    """Even a registered env spec is not built: its kwargs are the dataset's too (a MuJoCo
    ``xml_file``, say), and Minari always writes both spaces."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    metadata = _edit_metadata(_hopper_minari(tmp_path, hopper_episodes))
    with pytest.raises(DatasetError, match=f"{metadata}: no observation_space"):
        load_dataset(metadata.parent.parent)


@pytest.mark.parametrize("key, value", [
    ("data_format", "arrow"),  # picks another storage backend
    ("total_episodes", 10**15),  # Minari's np.arange(total_episodes): 8 PB
    ("observation_space", json.dumps({"type": "Box", "dtype": "S2000000000", "shape": [100], "low": ["a"] * 100,
                                      "high": ["b"] * 100})),  # Minari's np.array(low, dtype): 100 2-GB strings
])
def test_minari_metadata_that_would_pick_a_backend_or_allocate_is_refused(key, value, tmp_path, hopper_episodes,
                                                                          monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    metadata = _edit_metadata(_hopper_minari(tmp_path, hopper_episodes), drop_spaces=False, **{key: value})
    with pytest.raises(DatasetError, match=f"{metadata}: {key}"):
        load_dataset(metadata.parent.parent)


def test_every_shipped_minari_dataset_passes_the_checks():
    folders = sorted(p.parent.parent for p in (REPO_ROOT / "data" / "minari").rglob("data/metadata.json"))
    assert len(folders) >= 6
    for folder in folders:
        safety.check_minari_folder(folder)


# --------------------------------------------------------------------- declared sizes
def _d4rl(path: Path, **replace) -> Path:
    """A small D4RL-format file; ``replace`` maps a key to a function that writes it instead."""
    arrays = {"observations": np.zeros((5, 3), "f4"), "actions": np.zeros((5, 2), "f4"),
              "rewards": np.zeros(5, "f4"), "terminals": np.zeros(5, bool)}
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            replace.pop(key, lambda f, key: f.create_dataset(key, data=value))(f, key)
        for write in replace.values():
            write(f)
    return path


def _files(folder: Path) -> dict[str, int]:
    return {str(p): p.stat().st_size for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("kind", ["d4rl", "native", "minari"])
def test_an_hdf5_file_that_declares_far_more_than_it_stores_is_refused(kind, tmp_path, hopper_episodes, monkeypatch):
    if kind == "minari":
        monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
        source = _hopper_minari(tmp_path, hopper_episodes)
        path, key = source / "data" / "main_data.hdf5", "episode_0/observations"
        with h5py.File(path, "a") as f:
            del f[key]
            f.create_dataset(key, shape=HUGE, dtype="f8", chunks=(1024, 11))  # Minari's layout: chunked
    else:
        key = "observations"
        gzip = {"chunks": (10**6, 11), "compression": "gzip"} if kind == "native" else {}  # as save_native writes
        source = path = _d4rl(tmp_path / f"{kind}.hdf5", observations=lambda f, key: f.create_dataset(
            key, shape=HUGE, dtype="f8", **gzip))
        if kind == "native":
            with h5py.File(path, "a") as f:
                for other in ("timeouts", "next_observations"):
                    f.create_dataset(other, data=np.zeros((5, 3) if other == "next_observations" else 5, "f4"))
                f.attrs["rlft_format"] = NATIVE_FORMAT
    before = _files(tmp_path)
    assert path.stat().st_size < 1_000_000  # (Minari's holds its 400 real steps too)
    with pytest.raises(DatasetError, match=rf"{path}: '{key}' declares shape \(1000000000000, 11\) of float64 "
                                           r"\(80.0 TiB\) but the file stores only \d+ bytes for it"):
        load_dataset(source)
    assert _files(tmp_path) == before


def test_arrays_larger_than_the_available_memory_are_refused(native_hopper, monkeypatch):
    monkeypatch.setattr(safety, "available_memory", lambda: 64 * 1024)
    with pytest.raises(DatasetError, match=rf"{native_hopper}: its arrays declare .*the largest, "
                                           r"'(next_)?observations'.* 64.0 KiB available"):
        load_dataset(native_hopper)


@pytest.mark.parametrize("case", ["external link", "external storage", "scaleoffset filter"])
def test_an_array_stored_elsewhere_or_with_an_unbounded_filter_is_refused(case, tmp_path):
    other = tmp_path / "other.bin"
    other.write_bytes(np.arange(15, dtype="f4").tobytes())
    with h5py.File(tmp_path / "other.hdf5", "w") as f:
        f.create_dataset("x", data=np.ones((5, 3), "f4"))
    write = {
        "external link": lambda f, key: f.__setitem__(key, h5py.ExternalLink(str(tmp_path / "other.hdf5"), "x")),
        "external storage": lambda f, key: f.create_dataset(key, shape=(5, 3), dtype="f4",
                                                            external=[(str(other), 0, 60)]),
        "scaleoffset filter": lambda f, key: f.create_dataset(key, data=np.zeros((5, 3), "f4"), scaleoffset=2),
    }[case]
    path = _d4rl(tmp_path / "file.hdf5", observations=write)
    with pytest.raises(DatasetError, match=f"{path}: 'observations' (is a link to|is stored in|is encoded with)"):
        load_dataset(path)


# ---------------------------------------------------------------------- not numbers
NOT_ARRAYS = {  # case -> (key, writer, what the message says)
    "byte strings": ("observations", lambda f, k: f.create_dataset(k, data=np.full((5, 3), b"a")), "dtype |S1"),
    "strings": ("observations", lambda f, k: f.create_dataset(k, data=["abc"] * 5, dtype=h5py.string_dtype()),
                "dtype string"),
    "compound": ("observations", lambda f, k: f.create_dataset(k, data=np.zeros(5, [("a", "f4"), ("b", "i4")])),
                 "dtype [('a', '<f4'), ('b', '<i4')]"),
    "complex": ("observations", lambda f, k: f.create_dataset(k, data=np.ones((5, 3), "c8")), "dtype complex64"),
    "group": ("observations", lambda f, k: f.create_group(k), "is an HDF5 group, not an array"),
    "scalar": ("observations", lambda f, k: f.create_dataset(k, data=1.0), "is a scalar"),
    "scalar rewards": ("rewards", lambda f, k: f.create_dataset(k, data=0.0), "is a scalar"),
}


@pytest.mark.parametrize("case", list(NOT_ARRAYS))
def test_a_d4rl_key_that_is_not_a_numeric_array_is_named(case, tmp_path):
    key, write, says = NOT_ARRAYS[case]
    path = _d4rl(tmp_path / "file.hdf5", **{key: write})
    with pytest.raises(DatasetError) as err:
        load_dataset(path)
    assert str(err.value).startswith(f"{path}: '{key}' ") and says in str(err.value)


@pytest.mark.parametrize("attr", ["action_low", "ref_min_score"])
def test_a_non_numeric_hdf5_attribute_is_named(attr, tmp_path):
    pair = {"action_low": "action_high", "ref_min_score": "ref_max_score"}[attr]

    def attrs(f):
        f.attrs[attr], f.attrs[pair] = "abc", "1.0"
    path = _d4rl(tmp_path / "file.hdf5", attrs=attrs)
    with pytest.raises(DatasetError, match=f"{path}: {attr} is 'abc', not a number"):
        load_dataset(path)


def test_a_minari_episode_of_strings_is_named(tmp_path, hopper_episodes, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    folder = _hopper_minari(tmp_path, hopper_episodes)
    path = folder / "data" / "main_data.hdf5"
    with h5py.File(path, "a") as f:
        shape = f["episode_0/observations"].shape
        del f["episode_0/observations"]
        f.create_dataset("episode_0/observations", data=np.full(shape, b"x"))
    with pytest.raises(DatasetError, match=rf"{path}: 'episode_0/observations' holds .*dtype \|S1"):
        load_dataset(folder)


@pytest.mark.parametrize("key", ["rewards", "observations"])
def test_a_minari_episode_member_that_is_a_group_is_named(key, tmp_path, hopper_episodes, monkeypatch):
    """Minari's storage asserts each member's layout (a bare AssertionError, a traceback in the CLI)."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    folder = _hopper_minari(tmp_path, hopper_episodes)
    path = folder / "data" / "main_data.hdf5"
    with h5py.File(path, "a") as f:
        del f[f"episode_0/{key}"]
        f.create_group(f"episode_0/{key}")
    with pytest.raises(DatasetError, match=f"{folder}: episode_0 cannot be read from {path}: it lacks a member"):
        load_dataset(folder)
