"""Checks a dataset's files pass before rlft reads them into memory or hands them to Minari.

A dataset is data, often downloaded: opening one must neither run code it names nor allocate
memory it only declares. Every refusal is a :class:`DatasetError` naming the file, the key and
the fix.

* **Minari metadata names code.** ``MinariStorage.read`` (minari/dataset/minari_storage.py)
  builds the environment of ``metadata.json``'s ``env_spec`` (``gym.make``: it imports and calls
  the spec's ``entry_point`` and its ``additional_wrappers``, with their kwargs) whenever the file
  lacks ``observation_space`` or ``action_space``; ``MinariDataset.recover_environment``
  (minari/dataset/minari_dataset.py) does the same with ``eval_env_spec``; ``data_format`` picks
  a storage backend (minari/dataset/_storages/__init__.py); the spaces are decoded with the
  ``dtype`` they name (minari/serialization.py) and ``total_episodes`` becomes
  ``np.arange(total_episodes)``. :func:`check_minari_folder` refuses a folder without both
  spaces (so Minari builds nothing), any env spec but a registered environment's, any format but
  HDF5, non-numeric space dtypes and an episode count the data file does not hold.
* **HDF5 declares sizes it does not store.** A file of a few KB can declare a (10^9, 11) float64
  dataset, and reading it allocates 82 GiB for fill values. :func:`checked_arrays` (D4RL and
  native files) and :func:`check_minari_folder` (Minari's ``main_data.hdf5``) compare each
  dataset's declared bytes with the bytes the file stores for it, times what compression can
  expand, and the total with the memory this machine has available; they refuse arrays stored
  in other files (links, external storage, virtual datasets), filters whose expansion has no
  known bound, and strings, compounds, groups or scalars where rlft reads an array of numbers.
"""

from __future__ import annotations

import functools
import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

import gymnasium as gym
import h5py
import numpy as np

from rlft.envs.factory import register_task_module
from rlft.envs.registry import get_task
from rlft.offline.dataset import DatasetError

MAX_COMPRESSION_RATIO = 2048
"""The most one stored byte may expand to when read. Deflate (gzip) cannot exceed 1032:1
(https://zlib.net/zlib_tech.html, "Maximum Compression Factor"), LZF expands less (one 3-byte
token copies at most 264 bytes); shuffle and fletcher32 change no sizes. Twice gzip's ceiling."""
ALLOWED_FILTERS = frozenset({"gzip", "lzf", "shuffle", "fletcher32"})  # the filters that bound holds for
UNSTORED_BYTES = 1 << 20
"""A dataset may declare this much with nothing stored: HDF5 allocates a dataset's storage on
its first write and reads an unwritten one as its fill value, harmless at this size."""
LOAD_MEMORY_FACTOR = 3
"""A load's peak memory in units of the arrays it reads: the arrays, their concatenated or derived
copies (Minari episodes concatenated, ``next_observations``) and TransitionDataset's float32 copies."""
MAX_METADATA_BYTES = 64 << 20
"""Largest Minari metadata.json read: Minari writes every bound of a space, and a 512x512x3 image
space is 6 MB of JSON."""
NUMERIC_KINDS = "biuf"  # numpy dtype kinds of bool, int, unsigned and float: what rlft converts to float32
SIDE_EFFECT_WRAPPERS = frozenset({"RecordVideo", "HumanRendering"})  # write files where kwargs say / open a window
STEP_KEYS = ("observations", "actions", "rewards", "terminations", "truncations")
"""What ``HDF5Storage.get_episodes`` (minari/dataset/_storages/hdf5_storage.py) reads of each
episode besides its ``infos``."""


# ------------------------------------------------------------------------------- HDF5
def open_hdf5(path: Path) -> h5py.File:
    """``path`` opened read-only; a missing file is a FileNotFoundError, anything else that is not
    HDF5 a DatasetError."""
    if not path.is_file():
        raise FileNotFoundError(f"dataset file not found: {path}")
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise DatasetError(f"{path}: not a readable HDF5 file ({err})") from err


def checked_arrays(f: h5py.File, path: Path, keys: tuple[str, ...]) -> dict[str, h5py.Dataset]:
    """The datasets ``keys`` of the open file ``f`` (at ``path``), not yet read: each a numeric
    array (:func:`_check_numeric`) of the file's own stored bytes (:func:`_declared_bytes`), all
    of them together within the memory available (:func:`_check_memory`)."""
    arrays: dict[str, h5py.Dataset] = {}
    for key in keys:
        _check_link(path, key, f.get(key, getlink=True))
        node = f.get(key)
        if not isinstance(node, h5py.Dataset):
            kind = "an HDF5 group" if isinstance(node, h5py.Group) else f"a {type(node).__name__}"
            raise DatasetError(f"{path}: '{key}' is {kind}, not an array (an HDF5 dataset); write '{key}' as one")
        _check_numeric(path, key, node)
        arrays[key] = node
    _check_memory(path, {key: _declared_bytes(path, key, node) for key, node in arrays.items()})
    return arrays


def _check_link(path: Path, key: str, link: Any) -> None:
    """Refuse a link into another file: h5py would open the file it names."""
    if isinstance(link, h5py.ExternalLink):
        raise DatasetError(f"{path}: '{key}' is a link to {link.filename}:{link.path}; rlft reads only data stored "
                           "in the dataset's own file: copy the data in")


def _check_numeric(path: Path, key: str, dset: h5py.Dataset, jpeg_frames: bool = False) -> None:
    """Refuse a dataset rlft cannot read as an array of numbers, before reading it: strings,
    compounds, objects and complex numbers (which a float32 conversion fails on or truncates),
    and scalars (no rows). ``jpeg_frames`` also accepts variable-length uint8 (Minari's
    JPEG-encoded image observations)."""
    dtype = dset.dtype
    vlen = h5py.check_vlen_dtype(dtype)
    numeric = dtype.kind in NUMERIC_KINDS or (jpeg_frames and vlen is not None and np.dtype(vlen) == np.uint8)
    if not numeric:
        name = str(dtype) if vlen is None else "string" if vlen in (str, bytes) else f"vlen {np.dtype(vlen)}"
        raise DatasetError(f"{path}: '{key}' holds values that are not numbers (dtype {name}); rlft reads numeric "
                           "arrays only: store it as float32 (bool for flags)")
    if dset.ndim == 0:
        raise DatasetError(f"{path}: '{key}' is a scalar, not an array with one row per step")


def _declared_bytes(path: Path, key: str, dset: h5py.Dataset) -> int:
    """The bytes reading ``dset`` allocates (shape x item size), once checked against the bytes
    the file stores for it: a dataset that declares more than its stored bytes can expand to
    (:data:`MAX_COMPRESSION_RATIO`) is mostly fill value, and one stored in other files or with a
    filter of unknown expansion cannot be bounded at all."""
    if dset.external or dset.is_virtual:
        where = [name for name, *_ in dset.external] if dset.external else "a virtual dataset's sources"
        raise DatasetError(f"{path}: '{key}' is stored in other files ({where}); rlft reads only data stored in the "
                           "dataset's own file: rewrite the dataset with its data")
    filters = set(h5py.filters.get_filters(dset.id.get_create_plist())) - ALLOWED_FILTERS
    if filters:
        raise DatasetError(f"{path}: '{key}' is encoded with HDF5 filter(s) {sorted(map(str, filters))}, whose "
                           "expansion rlft cannot bound before reading; rewrite it with "
                           f"{sorted(ALLOWED_FILTERS)} only")
    declared = math.prod(dset.shape or ()) * dset.dtype.itemsize
    stored = dset.id.get_storage_size()
    if declared > max(stored * MAX_COMPRESSION_RATIO, UNSTORED_BYTES):
        raise DatasetError(f"{path}: '{key}' declares shape {dset.shape} of {dset.dtype} ({format_bytes(declared)}) "
                           f"but the file stores only {stored} bytes for it, and no compression rlft accepts expands "
                           f"data more than {MAX_COMPRESSION_RATIO}:1: the file is truncated or crafted; re-create "
                           "it from its source")
    return declared


def _check_memory(path: Path, declared: Mapping[str, int]) -> None:
    """Refuse arrays whose load (:data:`LOAD_MEMORY_FACTOR` times their declared bytes) would not
    fit in the memory this machine has available: a clear error instead of a MemoryError, or of
    the kernel killing rlft."""
    available = available_memory()
    total = sum(declared.values())
    if available is None or total * LOAD_MEMORY_FACTOR <= available:
        return
    largest = max(declared, key=declared.__getitem__)
    raise DatasetError(f"{path}: its arrays declare {format_bytes(total)} (the largest, '{largest}', "
                       f"{format_bytes(declared[largest])}) and loading them takes about {LOAD_MEMORY_FACTOR}x that, "
                       f"but this machine has {format_bytes(available)} available: free memory, or load the dataset "
                       "on a larger machine")


def available_memory() -> int | None:
    """Bytes this process can still allocate: Linux's ``MemAvailable`` (free memory plus what the
    kernel can reclaim), else the available physical pages, else all physical pages (macOS), else
    None (unknown: then only the stored-bytes bound applies)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    for pages in ("SC_AVPHYS_PAGES", "SC_PHYS_PAGES"):
        try:
            return os.sysconf(pages) * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError):
            continue
    return None


def format_bytes(n: int) -> str:
    """``n`` bytes for a message: ``512 B``, ``64.0 KiB`` ... ``80.0 TiB``."""
    exponent = min(int(math.log(n, 1024)), 4) if n >= 1024 else 0
    return f"{n} B" if exponent == 0 else f"{n / 1024 ** exponent:.1f} {'KMGT'[exponent - 1]}iB"


# ----------------------------------------------------------------------------- Minari
def check_minari_folder(folder: Path) -> None:
    """Refuse a Minari dataset folder (the one holding ``data/``) whose ``metadata.json`` would
    make Minari import, call or allocate anything, or whose ``main_data.hdf5`` declares more than
    it stores or than memory holds. Runs before any Minari code sees the folder."""
    meta_path = folder / "data" / "metadata.json"
    metadata = _metadata(meta_path)
    for key in ("env_spec", "eval_env_spec"):
        if metadata.get(key) is not None:
            _check_env_spec(meta_path, key, _json(meta_path, key, metadata[key]))
    for key in ("observation_space", "action_space"):
        if key not in metadata:
            raise DatasetError(f"{meta_path}: no {key}; Minari would then build the environment env_spec names to "
                               "find it, and rlft never runs code a dataset names: write the dataset with its spaces "
                               "(minari.create_dataset_from_buffers records them)")
        _check_space(meta_path, key, _json(meta_path, key, metadata[key]))
    if metadata.get("data_format") != "hdf5":
        raise DatasetError(f"{meta_path}: data_format is {metadata.get('data_format')!r}; rlft reads Minari's 'hdf5' "
                           "format only: convert the dataset to it")
    data_path = folder / "data" / "main_data.hdf5"
    if not data_path.is_file():
        raise DatasetError(f"{folder}: Minari dataset without its data file {data_path}")
    with open_hdf5(data_path) as f:
        _check_minari_data(f, data_path)
        _check_episode_count(f, data_path, meta_path, metadata.get("total_episodes"))


def _metadata(meta_path: Path) -> dict[str, Any]:
    """``metadata.json`` as a dict, read only when it is a regular file of a size Minari writes."""
    if not meta_path.is_file():  # also a FIFO or a device such as /dev/zero, which would never end
        raise DatasetError(f"{meta_path.parent.parent}: not a Minari dataset folder (no regular file {meta_path})")
    if meta_path.stat().st_size > MAX_METADATA_BYTES:
        raise DatasetError(f"{meta_path}: {format_bytes(meta_path.stat().st_size)}, more than any Minari metadata "
                           f"({format_bytes(MAX_METADATA_BYTES)} at most)")
    try:
        metadata = json.loads(meta_path.read_bytes())
    except (ValueError, RecursionError) as err:
        raise DatasetError(f"{meta_path}: not valid JSON ({err})") from None
    if not isinstance(metadata, dict):
        raise DatasetError(f"{meta_path}: not a JSON object")
    return metadata


def _json(meta_path: Path, key: str, value: Any) -> Any:
    """A metadata value Minari stores as a JSON string (spaces and env specs), parsed as Minari
    parses it."""
    if not isinstance(value, str):
        raise DatasetError(f"{meta_path}: {key} is a {type(value).__name__}, not the JSON string Minari writes")
    try:
        return json.loads(value)
    except (ValueError, RecursionError) as err:
        raise DatasetError(f"{meta_path}: {key} is not valid JSON ({err})") from None


def _check_env_spec(meta_path: Path, key: str, spec: Any) -> None:
    """Accept an env spec only as data about a registered environment: its ``id`` registered with
    Gymnasium (rlft first imports the module of its own task of that id, from its own registry,
    never a module the dataset names), its ``entry_point`` and ``vector_entry_point`` the
    registered ones, its ``additional_wrappers`` Gymnasium's own. Then building it runs only code
    the registry already names. The id is looked up in ``gym.registry`` directly: ``gym.spec``
    would import the module of an id spelt ``module:name``."""
    if not isinstance(spec, dict):
        raise DatasetError(f"{meta_path}: {key} is not a JSON object (a Gymnasium EnvSpec)")
    env_id = spec.get("id")
    registered = _registered(env_id)
    if registered is None:
        raise _names_code(meta_path, f"{key}.id", env_id, "which is not a registered Gymnasium environment",
                          f"register the environment before loading the dataset, or remove {key}")
    fix = f"set it to {registered.entry_point!r}, the registered one, or remove {key}"
    if spec.get("entry_point") != registered.entry_point:
        raise _names_code(meta_path, f"{key}.entry_point", spec.get("entry_point"),
                          f"but {env_id} is registered with entry point {registered.entry_point!r}", fix)
    if spec.get("vector_entry_point") not in (None, registered.vector_entry_point):
        raise _names_code(meta_path, f"{key}.vector_entry_point", spec.get("vector_entry_point"),
                          f"but {env_id} is registered with vector entry point {registered.vector_entry_point!r}",
                          f"remove it from {key}")
    wrappers = spec.get("additional_wrappers", [])
    for i, wrapper in enumerate(wrappers if isinstance(wrappers, list) else [wrappers]):
        entry_point = wrapper.get("entry_point") if isinstance(wrapper, dict) else wrapper
        if entry_point not in _gymnasium_wrappers():
            raise _names_code(meta_path, f"{key}.additional_wrappers[{i}].entry_point", entry_point,
                              "which is not one of Gymnasium's wrappers", f"remove that wrapper from {key}")


def _names_code(meta_path: Path, key: str, value: Any, why: str, fix: str) -> DatasetError:
    return DatasetError(f"{meta_path}: {key} is {value!r}, {why}; a dataset is data and rlft never imports or calls "
                        f"what one names (Minari would build its env spec with gym.make): {fix}")


def _registered(env_id: Any) -> gym.envs.registration.EnvSpec | None:
    """The registered spec of ``env_id``, after importing the module of rlft's task of that id
    when Gymnasium does not know it yet; None for an id neither knows."""
    if not isinstance(env_id, str):
        return None
    if env_id not in gym.registry:
        try:
            register_task_module(get_task(env_id))
        except KeyError:
            return None
    return gym.registry.get(env_id)


@functools.cache
def _gymnasium_wrappers() -> frozenset[str]:
    """The entry points of Gymnasium's own wrappers (those ``import gymnasium`` loads), the only
    ones an env spec in a dataset may list, less :data:`SIDE_EFFECT_WRAPPERS`."""
    import gymnasium.wrappers

    loaded = (vars(gymnasium.wrappers).get(name) for name in gymnasium.wrappers.__all__)
    return frozenset(f"{w.__module__}:{w.__name__}" for w in loaded if isinstance(w, type)
                     and issubclass(w, gym.Wrapper) and w.__name__ not in SIDE_EFFECT_WRAPPERS)


def _check_space(meta_path: Path, key: str, space: Any) -> None:
    """Refuse a serialised space whose decoding would allocate what the file does not hold: Minari
    decodes a Box's bounds with ``np.array(low, dtype=space["dtype"])`` (minari/serialization.py),
    and a string dtype of 2 GB items makes each bound 2 GB. Numeric dtypes have items of at most 16
    bytes, so the bounds are as large as the JSON that lists them."""
    if not isinstance(space, dict):
        raise DatasetError(f"{meta_path}: {key} is not a serialised Gymnasium space (a JSON object)")
    subspaces = space.get("subspaces")
    if isinstance(subspaces, dict):
        for name, subspace in subspaces.items():
            _check_space(meta_path, f"{key}.subspaces.{name}", subspace)
    elif isinstance(subspaces, list):
        for i, subspace in enumerate(subspaces):
            _check_space(meta_path, f"{key}.subspaces[{i}]", subspace)
    if "dtype" in space:
        try:
            numeric = isinstance(space["dtype"], str) and np.dtype(space["dtype"]).kind in NUMERIC_KINDS
        except (TypeError, ValueError):  # numpy does not understand it
            numeric = False
        if not numeric:
            raise DatasetError(f"{meta_path}: {key}.dtype is {space['dtype']!r}, not a numeric dtype; rlft reads "
                               "numeric spaces only")


def _check_minari_data(f: h5py.File, data_path: Path) -> None:
    """Check every dataset of ``main_data.hdf5``, all of which Minari reads (each episode's
    steps and infos): stored in this file, within what its stored bytes expand to and, together,
    in memory; an episode's steps numeric arrays (:data:`STEP_KEYS`)."""
    links: list[tuple[str, Any]] = []
    f.visititems_links(lambda name, link: links.append((name, link)))  # raising inside it would be a SystemError
    declared: dict[str, int] = {}
    for name, link in links:
        _check_link(data_path, name, link)
        node = f.get(name)
        if isinstance(node, h5py.Dataset):
            if name.split("/")[1:2] and name.split("/")[1] in STEP_KEYS:
                _check_numeric(data_path, name, node, jpeg_frames=True)
            declared[name] = _declared_bytes(data_path, name, node)
    _check_memory(data_path, declared)


def _check_episode_count(f: h5py.File, data_path: Path, meta_path: Path, total: Any) -> None:
    """Minari reads episodes ``0 .. total_episodes - 1`` (after ``np.arange(total_episodes)``):
    each must be a group of the data file. Only as many as the file has members are looked up, so
    a crafted count costs nothing: one more than that is missing anyway."""
    if type(total) is not int or total < 0:
        raise DatasetError(f"{meta_path}: total_episodes is {total!r}, not a number of episodes")
    for index in range(min(total, len(f) + 1)):
        if not isinstance(f.get(f"episode_{index}"), h5py.Group):
            raise DatasetError(f"{meta_path}: total_episodes lists {total} episodes but episode_{index} cannot be read "
                               f"from {data_path} (no such group)")
