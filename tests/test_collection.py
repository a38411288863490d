"""The D4RL-style collection pipeline writes loadable Minari datasets with the documented recipe."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rlft.offline.collection import CollectionConfig, collect
from rlft.offline.loaders import load_dataset


def test_collect_writes_four_minari_datasets(tmp_path):
    cfg = CollectionConfig(
        task="hopper", out_dir=str(tmp_path), sac_steps=400, sac_learning_starts=100, snapshot_every=100,
        snapshot_eval_episodes=1, transitions=150, sac_kwargs={"policy_kwargs": {"net_arch": [32, 32]}},
    )
    summary = collect(cfg)
    steps = [s["step"] for s in summary["snapshots"]]
    assert steps == [100, 200, 300, 400]
    returns = {s["step"]: s["eval_return"] for s in summary["snapshots"]}
    assert returns[summary["expert_snapshot_step"]] == max(returns.values())

    loaded = {kind: load_dataset(tmp_path / "rlft" / "hopper" / f"{kind}-v0") for kind in cfg.kinds}
    for kind in ("random", "medium", "expert"):
        assert len(loaded[kind]) == 150, kind
    # medium-replay = SAC's own experience up to the medium snapshot, whole episodes only
    assert 0 < len(loaded["medium-replay"]) <= summary["medium_snapshot_step"]
    for ds in loaded.values():
        assert ds.env_id == "Hopper-v5"
        assert (ds.ref_min_score, ds.ref_max_score) == (-20.272305, 3234.3)
        np.testing.assert_allclose(ds.episode_returns().sum(), ds.rewards.sum(), rtol=1e-4)
    written = json.loads((tmp_path / "rlft" / "hopper" / "collection-v0.json").read_text())
    assert written["datasets"]["medium"]["transitions"] == 150


def test_collect_refuses_to_overwrite(tmp_path):
    (tmp_path / "rlft" / "hopper" / "random-v0").mkdir(parents=True)
    cfg = CollectionConfig(task="hopper", out_dir=str(tmp_path), kinds=("random",), sac_steps=10)
    with pytest.raises(FileExistsError, match="random-v0 exists"):
        collect(cfg)


def test_the_reference_medium_stops_sac_at_the_first_snapshot_past_a_share_of_d4rls_expert(tmp_path):
    tiny = dict(task="hopper", out_dir=str(tmp_path), sac_learning_starts=100, snapshot_every=100,
                snapshot_eval_episodes=1, transitions=120, sac_kwargs={"policy_kwargs": {"net_arch": [32, 32]}},
                medium_target="reference", kind_suffix="-local", kinds=("medium", "medium-replay"))
    summary = collect(CollectionConfig(sac_steps=1000, medium_fraction=1e-4, **tiny))  # target 0.32: any snapshot
    assert [s["step"] for s in summary["snapshots"]] == [100] and summary["medium_snapshot_step"] == 100
    medium = load_dataset(tmp_path / "rlft" / "hopper" / "medium-local-v0")
    replay = load_dataset(tmp_path / "rlft" / "hopper" / "medium-replay-local-v0")
    assert len(medium) == 120 and 0 < len(replay) <= 100
    assert (tmp_path / "rlft" / "hopper" / "collection-local-v0.json").is_file()  # beside, not over, another's
    with pytest.raises(RuntimeError, match=r"short of the medium target 3234.3 \(1 of D4RL's expert"):
        collect(CollectionConfig(sac_steps=200, medium_fraction=1.0, version=1, **tiny))
    with pytest.raises(ValueError, match="writes no 'expert' data"):
        collect(CollectionConfig(**{**tiny, "kinds": ("expert",)}, version=2))
