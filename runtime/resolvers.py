"""OmegaConf resolvers used by ``configs/`` (registered on import of the runtime)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

import rlft

DATA_ROOT = Path(rlft.__file__).resolve().parent / "data"


def data_path(relative: str) -> str:
    """``${rlft_data:minari/...}``: a path inside the repository's ``data/`` folder."""
    return str(DATA_ROOT / relative)


def first_set(value: str | None, default: str) -> str:
    """``${rlft_or:a,b}``: ``a`` unless it is null or empty, else ``b``."""
    return value if value else default


for _name, _fn in (("rlft_data", data_path), ("rlft_or", first_set)):
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_new_resolver(_name, _fn)
