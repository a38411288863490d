"""An export folder read as untrusted input: its ``metadata.json`` and the files that names.

An export folder travels (copied onto a robot, downloaded, shared), so the runner trusts nothing
in it. :func:`read_metadata` parses ``metadata.json`` within a size bound, and the runners read
every value they use through :class:`Fields`, which checks its presence, type and range and, for
a shape, the memory it stands for, before anything is allocated; :meth:`Fields.file` resolves a
file name (symlinks followed) and refuses one outside the folder, so the runner opens nothing
else. Every refusal is an :class:`InvalidExportError` naming the file, the key path
(``control.obs_history``, ``inputs[0].shape``), the value and what is allowed.

The bounds lie far above what rlft exports (histories and chunks of a few steps, Push-T's 64x64x3
pixels, DPPO's 7x16 noise) and far below what would exhaust a robot's memory.
"""

from __future__ import annotations

import json
import math
import reprlib
from pathlib import Path
from typing import Any, Collection, NoReturn

MAX_METADATA_BYTES = 2**26  # metadata.json itself (a Push-T export's, with per-pixel statistics, is 0.5 MB)
MAX_ELEMENTS = 2**26  # values of one array the runner allocates, feeds or expects (256 MiB of float32)
MAX_RANK = 8  # dimensions of a declared shape
MAX_OBS_HISTORY = 1024  # observations stacked per query (rlft's policies: 1 to 4)
MAX_CHUNK = 1024  # actions per query (rlft's policies: 1 to 16)
INPUT_DTYPES = {"noise": ("float32", "float64"), "state": ("float32", "float64", "int32", "int64")}  # by input kind

_SHOWN = reprlib.Repr()  # a refused value, cut short (it may be a huge or deeply nested one)
_SHOWN.maxstring = _SHOWN.maxother = 160


class InvalidExportError(ValueError):
    """An export folder the runner refuses: the file and key at fault, the value and what is allowed."""


def read_metadata(folder: str | Path) -> Fields:
    """An export folder's ``metadata.json``: a file inside the folder, of at most
    ``MAX_METADATA_BYTES``, holding one JSON object."""
    folder = Path(folder)
    path = folder / "metadata.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not an rlft export: it has no metadata.json (run rlft-export first)")
    resolved = path.resolve()
    if not resolved.is_relative_to(folder.resolve()):
        raise InvalidExportError(f"{path} is a link to {resolved}, outside the export folder: refused")
    size = resolved.stat().st_size
    if size > MAX_METADATA_BYTES:
        raise InvalidExportError(f"{path} holds {size} bytes, more than MAX_METADATA_BYTES = {MAX_METADATA_BYTES}")
    try:
        data = json.loads(resolved.read_bytes())
    except (ValueError, RecursionError) as error:  # RecursionError: nested deeper than the parser goes
        raise InvalidExportError(f"{path} is not readable JSON: {type(error).__name__}: {error}") from error
    if not isinstance(data, dict):
        raise InvalidExportError(f"{path} holds a {type(data).__name__} ({_SHOWN.repr(data)}), not a JSON object")
    return Fields(data, str(path))


def _whole(value: Any) -> bool:
    """A JSON integer (``true`` parses as a Python int too, and is none)."""
    return isinstance(value, int) and not isinstance(value, bool)


class Fields:
    """Checked reads of one JSON object of an export's metadata: ``source`` names the file (or
    what else gave the metadata), ``path`` the object's key path in it (empty at the top)."""

    def __init__(self, data: dict[str, Any], source: str, path: str = ""):
        self.data, self.source, self.path = data, source, path

    def key(self, name: str) -> str:
        """The key path of ``name`` in this object."""
        return f"{self.path}.{name}" if self.path else name

    def refuse(self, name: str, value: Any, allowed: str) -> NoReturn:
        shown = _SHOWN.repr(value)
        raise InvalidExportError(f"{self.source}: {self.key(name)} = {shown} is refused; allowed: {allowed}")

    def get(self, name: str, optional: bool = False) -> Any:
        """The raw value of ``name``; ``None`` where an ``optional`` one is missing."""
        if name in self.data or optional:
            return self.data.get(name)
        raise InvalidExportError(f"{self.source}: {self.key(name)} is missing")

    def object(self, name: str) -> Fields:
        value = self.get(name)
        if not isinstance(value, dict):
            self.refuse(name, value, "a JSON object")
        return Fields(value, self.source, self.key(name))

    def objects(self, name: str, optional: bool = False) -> list[Fields] | None:
        """A list of JSON objects; ``None`` where an ``optional`` one is missing or null."""
        value = self.get(name, optional)
        if value is None and optional:
            return None
        if not (isinstance(value, list) and all(isinstance(item, dict) for item in value)):
            self.refuse(name, value, "a list of JSON objects")
        return [Fields(item, self.source, f"{self.key(name)}[{i}]") for i, item in enumerate(value)]

    def string(self, name: str, choices: Collection[str] | None = None) -> str:
        value = self.get(name)
        if not isinstance(value, str) or (choices is not None and value not in choices):
            self.refuse(name, value, "a string" if choices is None else f"one of {sorted(choices)}")
        return value

    def strings(self, name: str) -> list[str]:
        value = self.get(name)
        if not (isinstance(value, list) and all(isinstance(item, str) for item in value)):
            self.refuse(name, value, "a list of strings")
        return value

    def count(self, name: str, most: int, bound: str) -> int:
        """A whole number from 1 to ``most`` (``bound`` names where that comes from)."""
        value = self.get(name)
        if not (_whole(value) and 1 <= value <= most):
            self.refuse(name, value, f"a whole number from 1 to {most} ({bound})")
        return value

    def shape(self, name: str, copies: int = 1) -> tuple[int, ...]:
        """A shape: at most ``MAX_RANK`` positive whole numbers whose product, times the ``copies``
        of such an array the runner holds at once, is at most ``MAX_ELEMENTS``."""
        value = self.get(name)
        if not (isinstance(value, list) and len(value) <= MAX_RANK and all(_whole(n) and n >= 1 for n in value)
                and math.prod(value) * copies <= MAX_ELEMENTS):
            times = f" times {copies}" if copies > 1 else ""
            self.refuse(name, value, f"a list of at most MAX_RANK = {MAX_RANK} positive whole numbers whose product"
                                     f"{times} is at most MAX_ELEMENTS = {MAX_ELEMENTS}")
        return tuple(value)

    def file(self, name: str, folder: Path) -> Path:
        """The file that ``name`` names, resolved: a relative path whose target (symlinks followed)
        is a file inside ``folder``, so that an export cannot make the runner open anything else."""
        value = self.string(name)
        root = folder.resolve()
        if Path(value).anchor:
            self.refuse(name, value, "a path relative to the export folder (absolute paths are not)")
        try:
            path = (root / value).resolve()
        except (OSError, RuntimeError) as error:  # a symlink loop
            self.refuse(name, value, f"a path that resolves ({error})")
        if not path.is_relative_to(root):
            self.refuse(name, value, f"a path inside the export folder {root} (this one resolves to {path})")
        if not path.is_file():
            self.refuse(name, value, f"the name of a file in the export folder {root} (there is none such)")
        return path
