"""Read transition datasets from D4RL-format HDF5, Minari, and rlft's own files.

* **D4RL HDF5** -- the files D4RL downloads (``hopper_medium-v2.hdf5`` ...), read with h5py
  directly: the ``d4rl`` package (mujoco-py, old gym) is not needed. When a file has no
  ``next_observations`` they are derived as ``d4rl.qlearning_dataset`` does.
* **Minari** -- a dataset id resolved by ``minari.load_dataset`` (local root
  ``MINARI_DATASETS_PATH``), or the path of a dataset folder (the one holding ``data/``).
* **rlft native** -- an HDF5 file with the six D4RL keys plus attributes
  (``rlft_format``, ``env_id``, reference scores), written by :func:`save_native`.

Before reading anything every loader checks the files with :mod:`rlft.offline.safety`: no array
is read that declares more than the file stores or memory holds, or that is not numbers, and
Minari sees no folder whose metadata names code. Every loader then reads all arrays, validates
them (:class:`TransitionDataset`) and only then returns: a bad file raises before anything
half-loaded escapes.

:func:`load_task_dataset` loads a dataset *for a task*: it refuses data collected in another
environment (id and ``gymnasium.make`` kwargs, defaults included), warns when the file records
no environment, and brings actions into the ``[-1, 1]`` box rlft's agents act in: actions
recorded in the env's native bounds (a Minari dataset's action space, or the HDF5 attributes
``action_low``/``action_high``) are rescaled; actions outside the box are refused.
"""

from __future__ import annotations

import inspect
import itertools
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Mapping

import gymnasium as gym
import numpy as np

from rlft.envs.factory import make_task_env, register_task_module
from rlft.envs.registry import TaskSpec
from rlft.offline.dataset import REQUIRED_KEYS, DatasetError, DatasetWarning, TransitionDataset
from rlft.offline.safety import check_minari_folder, checked_arrays, open_hdf5

NATIVE_FORMAT = "rlft-transitions-v1"
D4RL_REQUIRED = ("observations", "actions", "rewards", "terminals")
_HDF5_SUFFIXES = (".hdf5", ".h5")


def load_dataset(source: str | os.PathLike, format: str = "auto") -> TransitionDataset:
    """Load a dataset from a path or a Minari id.

    ``format`` is ``"auto"`` (decided from the path), ``"d4rl"``, ``"minari"`` or ``"native"``.
    """
    path = Path(source).expanduser()
    if format == "auto":
        if path.suffix in _HDF5_SUFFIXES:
            format = "native" if _is_native(path) else "d4rl"
        else:
            format = "minari"  # a dataset folder, or an id such as "mujoco/hopper/medium-v0"
    if format == "d4rl":
        return load_d4rl_hdf5(path)
    if format == "native":
        return load_native(path)
    if format == "minari":
        return load_minari(source)
    raise ValueError(f"unknown dataset format {format!r}; use 'auto', 'd4rl', 'minari' or 'native'")


# ---------------------------------------------------------------------- HDF5
def load_task_dataset(
    source: str | os.PathLike, task: TaskSpec, format: str = "auto", collect: str | None = None,
    env_kwargs: Mapping[str, Any] | None = None, action_space: gym.Space | None = None,
) -> TransitionDataset:
    """:func:`load_dataset` for a run in ``task`` (made with the extra ``env_kwargs``): checks the
    environment the data was collected in (:func:`check_environment`), brings its actions into
    ``[-1, 1]`` (:func:`to_unit_actions`; ``action_space`` is the env's native one, made from the
    task when not given) and gives the dataset the task's reference returns if it has none.
    ``collect`` is the command that writes a missing dataset (the dataset config's ``collect:``);
    the error for a missing dataset shows it."""
    try:
        dataset = load_dataset(source, format)
    except FileNotFoundError as err:
        if collect:
            raise FileNotFoundError(f"{err}\n  this dataset is not shipped; write it with:\n    {collect}") from None
        raise
    check_environment(dataset, task, env_kwargs or {})
    if action_space is None:
        env = make_task_env(task, env_kwargs=env_kwargs)
        action_space = env.action_space
        env.close()
    if isinstance(action_space, gym.spaces.Box):
        to_unit_actions(dataset, action_space, task.env_id)
    if dataset.ref_min_score is None and np.isfinite([task.ref_min_score, task.ref_max_score]).all():
        dataset.with_reference_scores(task.ref_min_score, task.ref_max_score)
    return dataset


_NOT_DYNAMICS = {"render_mode", "width", "height", "camera_id", "camera_name"}  # kwargs that change no transition


def _plain(value: Any) -> Any:
    """``value`` with tuples and arrays as lists, so a default and its JSON-stored copy compare equal."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _make_defaults(task: TaskSpec) -> dict[str, Any]:
    """The kwargs ``gymnasium.make(task.env_id)`` uses when given none: the env constructor's
    defaults overlaid with the registered spec's kwargs."""
    register_task_module(task)
    spec = gym.spec(task.env_id)
    defaults: dict[str, Any] = {}
    try:
        creator = gym.envs.registration.load_env_creator(spec.entry_point) if isinstance(spec.entry_point, str) \
            else spec.entry_point
        defaults = {name: p.default for name, p in inspect.signature(creator).parameters.items()
                    if p.default is not inspect.Parameter.empty}
    except (ValueError, TypeError, ImportError, AttributeError):
        pass  # a constructor without a readable signature: only the spec's kwargs are known
    return {**defaults, **spec.kwargs}


def check_environment(dataset: TransitionDataset, task: TaskSpec, env_kwargs: Mapping[str, Any]) -> None:
    """Refuse a dataset collected in another environment than the run's: another Gymnasium id,
    or other ``gymnasium.make`` kwargs (a Minari env spec's ``kwargs``, compared with the task's
    and the run's own, each side completed with the env's defaults). A dataset that records no
    environment is used with a :class:`DatasetWarning` (the runner still checks its shapes)."""
    if not dataset.env_id:
        warnings.warn(f"{dataset.source} records no environment (no env spec / env_id): rlft cannot check that "
                      f"it was collected in {task.env_id} with the task's settings; using it because its "
                      f"observation and action shapes match the env's", DatasetWarning, stacklevel=3)
        return
    if dataset.env_id.split("-v")[0] != task.env_id.split("-v")[0]:
        raise DatasetError(f"{dataset.source}: collected in {dataset.env_id} but the run's env is {task.env_id}")
    theirs = dataset.metadata.get("env_kwargs")
    if theirs is None:
        return  # an HDF5 file names its env but not its kwargs
    defaults = _make_defaults(task)
    ours = {**defaults, **task.env_kwargs, **env_kwargs}
    recorded = {**defaults, **theirs}
    for key in sorted((set(theirs) | set(task.env_kwargs) | set(env_kwargs)) - _NOT_DYNAMICS):
        if key not in recorded or key not in ours:
            side = "the data was collected with" if key in theirs else "the run's env uses"
            raise DatasetError(f"{dataset.source}: {side} {key}={(theirs if key in theirs else ours)[key]!r}, "
                               f"which the other side leaves to a default rlft cannot read (env spec kwargs)")
        if _plain(recorded[key]) != _plain(ours[key]):
            raise DatasetError(f"{dataset.source}: collected with {key}={recorded[key]!r} but the run's "
                               f"{task.env_id} uses {key}={ours[key]!r} (the dataset's env spec kwargs)")


ACTION_TOLERANCE = 1e-3  # recorded actions may overshoot the [-1, 1] box by float error, then are clipped


def to_unit_actions(dataset: TransitionDataset, native: gym.spaces.Box, env_id: str) -> None:
    """Bring ``dataset.actions`` into the ``[-1, 1]`` box the agents act in (``make_env`` rescales
    the env's ``native`` bounds to it). Actions recorded in the native bounds (the dataset's
    ``action_bounds``) are rescaled; without recorded bounds, an env whose native box is not
    ``[-1, 1]`` is refused (the units are unknown); actions outside the box are refused."""
    low, high = native.low.astype(np.float64), native.high.astype(np.float64)
    unit = lambda lo, hi: np.allclose(lo, -1.0) and np.allclose(hi, 1.0)  # noqa: E731
    bounds = dataset.metadata.get("action_bounds")
    if bounds is not None:
        rec_low, rec_high = (np.broadcast_to(np.asarray(b, np.float64), low.shape) for b in bounds)
        if not unit(rec_low, rec_high):
            if not (np.allclose(rec_low, low) and np.allclose(rec_high, high)):
                raise DatasetError(f"{dataset.source}: actions were recorded in the box [{rec_low}, {rec_high}] "
                                   f"but {env_id}'s action box is [{low}, {high}]")
            dataset.actions = (2.0 * (dataset.actions - low) / (high - low) - 1.0).astype(np.float32)
            dataset.metadata["actions_rescaled_from"] = [low.tolist(), high.tolist()]
    elif not unit(low, high):
        raise DatasetError(f"{dataset.source}: {env_id} acts in [{low}, {high}] and rlft's agents in [-1, 1], but "
                           "the file records no action bounds, so the units of its actions are unknown; store the "
                           "bounds they were recorded in (HDF5 attributes action_low/action_high, or a Minari "
                           "action space)")
    excess = np.abs(dataset.actions).max(axis=1)
    if excess.max() > 1.0 + ACTION_TOLERANCE:
        row = int(excess.argmax())
        raise DatasetError(f"{dataset.source}: 'actions' row {row} is {dataset.actions[row].tolist()}, outside the "
                           f"[-1, 1] box rlft's agents act in ({env_id}'s native box [{low}, {high}] is rescaled "
                           "to it); rescale or clip the dataset's actions")
    np.clip(dataset.actions, -1.0, 1.0, out=dataset.actions)


def _is_native(path: Path) -> bool:
    with open_hdf5(path) as f:
        return f.attrs.get("rlft_format") == NATIVE_FORMAT


def _read_keys(f, path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The arrays ``keys`` of ``f``, read once all of them pass :func:`rlft.offline.safety.checked_arrays`."""
    missing = [k for k in keys if k not in f]
    if missing:
        raise DatasetError(f"{path}: missing key(s) {missing}; the file has {sorted(f.keys())}")
    return {k: np.asarray(dset[()]) for k, dset in checked_arrays(f, path, keys).items()}


def load_d4rl_hdf5(
    path: str | os.PathLike, ref_min_score: float | None = None, ref_max_score: float | None = None
) -> TransitionDataset:
    """Read a D4RL-format HDF5 file.

    ``timeouts`` may be absent (D4RL v0 files): then only ``terminals`` and the file end
    split episodes. Reference returns come from the arguments, else from the file's
    ``ref_min_score``/``ref_max_score`` attributes, else stay unset.
    """
    path = Path(path)
    with open_hdf5(path) as f:
        data = _read_keys(f, path, D4RL_REQUIRED + tuple(k for k in ("timeouts", "next_observations") if k in f))
        attrs = dict(f.attrs)
    data.setdefault("timeouts", np.zeros_like(data["terminals"]))
    for key in ("rewards", "terminals", "timeouts"):
        if data[key].ndim == 2 and data[key].shape[1] == 1:
            data[key] = data[key][:, 0]
    n = len(data["observations"])
    if n == 0:
        raise DatasetError(f"{path}: 'observations' has 0 rows: the file holds no transitions")
    for key, value in data.items():
        if len(value) != n:
            raise DatasetError(f"{path}: '{key}' has {len(value)} rows but 'observations' has {n}")
    if "next_observations" not in data:
        data = _derive_next_observations(data)
    return TransitionDataset(
        **{k: data[k] for k in REQUIRED_KEYS},
        source=str(path),
        env_id=_attr_str(attrs.get("env_id")),
        ref_min_score=ref_min_score if ref_min_score is not None else _attr_float(attrs, "ref_min_score", path),
        ref_max_score=ref_max_score if ref_max_score is not None else _attr_float(attrs, "ref_max_score", path),
        metadata=_action_bounds_metadata(attrs, path),
    )


def _action_bounds_metadata(attrs: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """``{"action_bounds": (low, high)}`` from an HDF5 file's ``action_low``/``action_high``
    attributes (the box its actions were recorded in), or ``{}`` when it has none."""
    if ("action_low" in attrs) != ("action_high" in attrs):
        raise DatasetError(f"{path}: give both HDF5 attributes action_low and action_high, or neither")
    if "action_low" not in attrs:
        return {}
    return {"action_bounds": tuple(_attr_floats(attrs, key, path).tolist() for key in ("action_low", "action_high"))}


def _derive_next_observations(data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``d4rl.qlearning_dataset``: next obs is the following row; the last step of a
    timed-out episode has no successor in the file and is dropped. The kept step before
    it inherits the timeout flag so episode boundaries survive."""
    n = len(data["observations"])
    keep = np.ones(n, dtype=bool)
    keep[-1] = False
    keep[:-1] &= ~data["timeouts"][:-1].astype(bool)
    next_obs = np.concatenate([data["observations"][1:], data["observations"][-1:]])
    timeouts = np.zeros(n, dtype=bool)
    dropped = np.flatnonzero(~keep)
    before = dropped - 1
    before = before[(before >= 0) & keep[np.clip(before, 0, n - 1)]]
    timeouts[before] = True
    out = {k: v[keep] for k, v in data.items() if k != "timeouts"}
    out["next_observations"] = next_obs[keep]
    out["timeouts"] = timeouts[keep]
    return out


def _attr_floats(attrs: Mapping[str, Any], key: str, source: str | os.PathLike) -> np.ndarray:
    """The number(s) ``attrs[key]`` (an HDF5 attribute or a Minari metadata key) as float64; one that is not
    numbers (a string, say) is a :class:`DatasetError` naming ``source`` and ``key``."""
    try:
        return np.asarray(attrs[key], np.float64)
    except (TypeError, ValueError):
        raise DatasetError(f"{source}: {key} is {_attr_str(attrs[key])!r}, not a number") from None


def _attr_float(attrs: Mapping[str, Any], key: str, source: str | os.PathLike) -> float | None:
    """The one number ``attrs[key]``, or None when it is absent."""
    if attrs.get(key) is None:
        return None
    value = _attr_floats(attrs, key, source)
    if value.size != 1:
        raise DatasetError(f"{source}: {key} is {value.tolist()}, not one number")
    return value.item()


def _attr_str(value) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def save_native(dataset: TransitionDataset, path: str | os.PathLike) -> Path:
    """Write ``dataset`` as an rlft native HDF5 file, atomically (temp file + rename)."""
    import h5py

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            for key in REQUIRED_KEYS:
                f.create_dataset(key, data=getattr(dataset, key), compression="gzip", compression_opts=4)
            f.attrs["rlft_format"] = NATIVE_FORMAT
            if dataset.env_id is not None:
                f.attrs["env_id"] = dataset.env_id
            if dataset.ref_min_score is not None:
                f.attrs["ref_min_score"] = dataset.ref_min_score
                f.attrs["ref_max_score"] = dataset.ref_max_score
            if "action_bounds" in dataset.metadata:
                f.attrs["action_low"], f.attrs["action_high"] = dataset.metadata["action_bounds"]
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_native(path: str | os.PathLike) -> TransitionDataset:
    """Read a file written by :func:`save_native`."""
    path = Path(path)
    with open_hdf5(path) as f:
        if f.attrs.get("rlft_format") != NATIVE_FORMAT:
            raise DatasetError(f"{path}: not an rlft native dataset (attribute rlft_format != {NATIVE_FORMAT!r})")
        data = _read_keys(f, path, REQUIRED_KEYS)
        attrs = dict(f.attrs)
    return TransitionDataset(
        **data,
        source=str(path),
        env_id=_attr_str(attrs.get("env_id")),
        ref_min_score=_attr_float(attrs, "ref_min_score", path),
        ref_max_score=_attr_float(attrs, "ref_max_score", path),
        metadata=_action_bounds_metadata(attrs, path),
    )


# -------------------------------------------------------------------- Minari
def load_minari(id_or_path: str | os.PathLike, download: bool = False) -> TransitionDataset:
    """Read a Minari dataset by id (in the local root ``MINARI_DATASETS_PATH``; with ``download``,
    fetched first when missing) or by its folder path.

    The folder passes :func:`rlft.offline.safety.check_minari_folder` before Minari opens it.
    Dict observations (goal-conditioned tasks) are flattened in the space's key order,
    matching ``gymnasium.wrappers.FlattenObservation`` on the environment side.
    """
    import minari

    path = Path(id_or_path).expanduser()
    if path.is_dir():
        folder, source = path, str(path)
    elif path.is_absolute() or str(id_or_path).startswith("."):
        raise FileNotFoundError(f"dataset folder not found: {path}")
    else:
        folder, source = _minari_id_folder(str(id_or_path), download), str(id_or_path)
    if not (folder / "data").is_dir():
        raise DatasetError(f"{folder}: not a Minari dataset folder (no 'data/' inside)")
    check_minari_folder(folder)
    try:
        dataset = minari.MinariDataset(folder / "data")
    except Exception as err:  # minari raises several types for broken folders
        raise DatasetError(f"{source}: cannot open Minari dataset ({type(err).__name__}: {err})") from err

    columns: dict[str, list[np.ndarray]] = {k: [] for k in REQUIRED_KEYS}
    for episode in _episodes(dataset, source):
        obs = _flatten_observations(episode.observations, source)
        steps = len(episode.rewards)
        if len(obs) != steps + 1:
            raise DatasetError(
                f"{source}: episode {episode.id} has {len(obs)} observations for {steps} steps (expected {steps + 1})"
            )
        columns["observations"].append(obs[:-1])
        columns["next_observations"].append(obs[1:])
        columns["actions"].append(np.asarray(episode.actions).reshape(steps, -1))
        columns["rewards"].append(np.asarray(episode.rewards))
        columns["terminals"].append(np.asarray(episode.terminations, dtype=bool))
        timeouts = np.asarray(episode.truncations, dtype=bool).copy()
        if steps and not episode.terminations[-1]:
            timeouts[-1] = True  # an episode that did not terminate still ends here
        columns["timeouts"].append(timeouts)
    if not columns["rewards"]:
        raise DatasetError(f"{source}: Minari dataset has no episodes")
    metadata, meta_path = dataset.storage.metadata, folder / "data" / "metadata.json"
    env_spec = dataset.env_spec
    space = dataset.action_space
    return TransitionDataset(
        **{k: np.concatenate(v) for k, v in columns.items()},
        source=source,
        env_id=env_spec.id if env_spec is not None else None,
        ref_min_score=_attr_float(metadata, "ref_min_score", meta_path),
        ref_max_score=_attr_float(metadata, "ref_max_score", meta_path),
        metadata={
            "minari_id": metadata.get("dataset_id"),
            "minari_version": metadata.get("minari_version"),
            **({"env_kwargs": dict(env_spec.kwargs)} if env_spec is not None else {}),
            **({"action_bounds": (space.low.tolist(), space.high.tolist())} if isinstance(space, gym.spaces.Box)
               else {}),
        },
    )


def _minari_id_folder(dataset_id: str, download: bool) -> Path:
    """The folder ``minari.load_dataset(dataset_id)`` would read (``get_dataset_path``, as in
    minari/storage/local.py), downloaded first when asked (Minari's download reads no more than
    the metadata's JSON): rlft checks the folder before Minari opens it, instead of letting
    ``minari.load_dataset`` open it straight after a download."""
    from minari.storage import hosting
    from minari.storage.datasets_root_dir import get_dataset_path

    folder = get_dataset_path(dataset_id)
    if not (folder / "data").exists():
        if not download:
            raise FileNotFoundError(f"Minari dataset {dataset_id!r} is not in the local root ({get_dataset_path()}; "
                                    f"no {folder / 'data'}); download it with `minari download {dataset_id}` or pass "
                                    "download=True")
        hosting.download_dataset(dataset_id)
    return folder


def _episodes(dataset, source: str):
    """The episodes of a Minari dataset, in order. An episode the data file holds otherwise than
    Minari wrote it is a :class:`DatasetError` naming the file and the episode, instead of h5py's
    ``KeyError`` (a missing member) or the bare ``AssertionError`` of ``HDF5Storage.get_episodes``
    (minari/dataset/_storages/hdf5_storage.py asserts each member is a group or an array as the
    dataset's space says). Missing episodes were refused before (:mod:`rlft.offline.safety`)."""
    episodes = dataset.iterate_episodes()  # episode ids 0 .. total_episodes - 1
    for index in itertools.count():
        try:
            episode = next(episodes)
        except StopIteration:
            return
        except (KeyError, OSError, AssertionError) as err:
            data = Path(dataset.storage.data_path) / "main_data.hdf5"
            raise DatasetError(f"{source}: episode_{index} cannot be read from {data}: it lacks a member or holds one "
                               "otherwise than Minari writes it for the dataset's spaces (observations, actions, "
                               f"rewards, terminations, truncations) ({type(err).__name__}: {err})") from None
        yield episode


def _flatten_observations(observations, source: str) -> np.ndarray:
    if isinstance(observations, dict):
        return np.concatenate([np.asarray(observations[k]).reshape(len(observations[k]), -1) for k in observations], -1)
    obs = np.asarray(observations)
    if obs.ndim != 2:
        raise DatasetError(f"{source}: observations must be flat vectors, got per-episode shape {obs.shape}")
    return obs
