"""Dataset round trips (D4RL HDF5, Minari, native) and clear errors on bad files."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from rlft.offline.dataset import DatasetError, TransitionDataset
from rlft.offline.loaders import load_d4rl_hdf5, load_dataset, load_minari, load_native, save_native

from conftest import episodes_to_dataset

KEYS = ("observations", "actions", "rewards", "terminals", "timeouts", "next_observations")


def assert_same(a: TransitionDataset, b: TransitionDataset) -> None:
    for key in KEYS:
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key), err_msg=key)


def write_d4rl(path: Path, ds: TransitionDataset, with_next: bool = True, drop: tuple[str, ...] = ()) -> Path:
    with h5py.File(path, "w") as f:
        for key in KEYS:
            if key in drop or (key == "next_observations" and not with_next):
                continue
            f.create_dataset(key, data=getattr(ds, key))
    return path


def test_dataset_types_and_episode_boundaries(hopper_dataset, hopper_episodes):
    ds = hopper_dataset
    assert ds.observations.dtype == np.float32 and ds.rewards.dtype == np.float32
    assert ds.terminals.dtype == bool
    assert len(ds.episode_ends) == len(hopper_episodes)
    expected = [e["rewards"].sum() for e in hopper_episodes]
    np.testing.assert_allclose(ds.episode_returns(), expected, rtol=1e-5)
    slices = list(ds.episode_slices())
    assert slices[0].start == 0 and slices[-1].stop == len(ds)


def test_d4rl_round_trip(tmp_path, hopper_dataset):
    path = write_d4rl(tmp_path / "hopper_random-v2.hdf5", hopper_dataset)
    loaded = load_dataset(path)
    assert_same(loaded, hopper_dataset)
    assert loaded.source == str(path)


def test_d4rl_without_next_observations_matches_qlearning_dataset(tmp_path, hopper_dataset):
    """Next observations are the following row; timed-out final steps are dropped."""
    path = write_d4rl(tmp_path / "old.hdf5", hopper_dataset, with_next=False)
    loaded = load_d4rl_hdf5(path)
    ds = hopper_dataset
    keep = [i for i in range(len(ds) - 1) if not ds.timeouts[i]]
    np.testing.assert_array_equal(loaded.observations, ds.observations[keep])
    np.testing.assert_array_equal(loaded.next_observations, ds.observations[[i + 1 for i in keep]])
    # terminal transitions keep their successor row, and every episode boundary survives
    assert loaded.terminals.sum() == ds.terminals[keep].sum()
    assert len(loaded.episode_ends) == len(ds.episode_ends)


def test_minari_round_trip_by_id_and_path(tmp_path, hopper_episodes, hopper_dataset, monkeypatch):
    import minari
    from minari.data_collector import EpisodeBuffer

    root = tmp_path / "root"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    buffers = [EpisodeBuffer(id=i, **ep) for i, ep in enumerate(hopper_episodes)]
    minari.create_dataset_from_buffers(
        "test/hopper/random-v0", buffers, env="Hopper-v5", ref_min_score=-20.0, ref_max_score=3000.0,
        data_format="hdf5", author="t", author_email="t@t", code_permalink="t", eval_env="Hopper-v5",
    )
    by_id = load_minari("test/hopper/random-v0")
    by_path = load_dataset(root / "test" / "hopper" / "random-v0")
    for loaded in (by_id, by_path):
        assert_same(loaded, hopper_dataset)
        assert loaded.env_id == "Hopper-v5"
        assert (loaded.ref_min_score, loaded.ref_max_score) == (-20.0, 3000.0)
    np.testing.assert_allclose(by_id.normalize_score(3000.0), 100.0)


def test_native_round_trip(tmp_path, hopper_dataset):
    hopper_dataset.env_id = "Hopper-v5"
    hopper_dataset.with_reference_scores(-20.0, 3234.3)
    path = save_native(hopper_dataset, tmp_path / "sub" / "data.h5")
    loaded = load_dataset(path)
    assert_same(loaded, hopper_dataset)
    assert loaded.env_id == "Hopper-v5" and loaded.ref_max_score == pytest.approx(3234.3)
    assert not list(path.parent.glob("*.tmp")), "atomic write left a temp file"


def test_missing_key_names_file_and_key(tmp_path, hopper_dataset):
    path = write_d4rl(tmp_path / "broken.hdf5", hopper_dataset, drop=("actions",))
    with pytest.raises(DatasetError, match=r"broken\.hdf5.*missing key\(s\) \['actions'\]"):
        load_dataset(path)


def test_mismatched_rows_names_key(tmp_path, hopper_dataset):
    path = tmp_path / "short.hdf5"
    write_d4rl(path, hopper_dataset)
    with h5py.File(path, "a") as f:
        del f["rewards"]
        f.create_dataset("rewards", data=np.zeros(len(hopper_dataset) - 3, dtype=np.float32))
    with pytest.raises(DatasetError, match=r"short\.hdf5.*'rewards' has \d+ rows"):
        load_d4rl_hdf5(path)


def test_mismatched_shape_and_nan_rejected(hopper_dataset):
    with pytest.raises(DatasetError, match="next_observations.*does not match"):
        TransitionDataset(**{**{k: getattr(hopper_dataset, k) for k in KEYS},
                             "next_observations": hopper_dataset.next_observations[:, :5]}, source="x.h5")
    bad = hopper_dataset.rewards.copy()
    bad[7] = np.nan
    with pytest.raises(DatasetError, match="'rewards' has a non-finite value at row 7"):
        TransitionDataset(**{**{k: getattr(hopper_dataset, k) for k in KEYS}, "rewards": bad}, source="x.h5")


def test_missing_and_non_hdf5_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.hdf5"):
        load_dataset(tmp_path / "nope.hdf5")
    junk = tmp_path / "junk.hdf5"
    junk.write_text("not hdf5")
    with pytest.raises(DatasetError, match="junk.hdf5: not a readable HDF5 file"):
        load_dataset(junk)
    plain = write_d4rl(tmp_path / "plain.h5", episodes_to_dataset([{
        "observations": np.zeros((3, 2)), "actions": np.zeros((2, 1)), "rewards": np.zeros(2),
        "terminations": np.zeros(2, bool), "truncations": np.array([False, True])}]))
    with pytest.raises(DatasetError, match="not an rlft native dataset"):
        load_native(plain)


def test_unknown_minari_id_explains_how_to_get_it():
    with pytest.raises(FileNotFoundError, match="minari download mujoco/hopper/nothere-v0"):
        load_dataset("mujoco/hopper/nothere-v0")


def test_space_check_names_both_shapes(hopper_dataset):
    with pytest.raises(DatasetError, match=r"observations have dim 11 but Walker2d-v5 observations have shape \(17,\)"):
        hopper_dataset.check_spaces((17,), (6,), "Walker2d-v5")


def test_reference_scores_are_validated(hopper_dataset):
    with pytest.raises(DatasetError, match=r"ref_max_score \(5.0\) must exceed ref_min_score \(10.0\)"):
        hopper_dataset.with_reference_scores(10.0, 5.0)
    hopper_dataset.ref_min_score = hopper_dataset.ref_max_score = None
    with pytest.raises(DatasetError, match="no reference returns"):
        hopper_dataset.normalize_score(1.0)
