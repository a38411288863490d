"""Mixed precision for the policies' forward passes (``autocast: bfloat16`` in the PPO and text-learner configs).

Under ``bfloat16`` the matmuls and convolutions of a forward pass run in bfloat16 through
``torch.autocast`` (tensor cores on a GPU, AMX on a recent x86 CPU), while parameters, optimiser
states and gradients stay float32. Numerically sensitive steps stay float32: torch's autocast lists
keep reductions and normalisations there, and rlft casts logits and Gaussian means to float32 before
any log-probability. A rollout and the update that reuses its log-probs run under the same setting:
the text learners rescore the old log-probs, so their first ratio is exactly 1; env-step PPO recomputes
them up to bfloat16 rounding.
"""

from __future__ import annotations

import contextlib
from typing import ContextManager

import torch

AUTOCAST = {"float32": None, "bfloat16": torch.bfloat16}


def check_autocast(value: str, key: str) -> None:
    """``ValueError`` naming ``key`` unless ``value`` is one of :data:`AUTOCAST`."""
    if value not in AUTOCAST:
        raise ValueError(f"{key} must be one of {sorted(AUTOCAST)}, got {value!r}")


def autocast(device: torch.device | str, precision: str) -> ContextManager:
    """The context a forward pass runs in: ``torch.autocast`` to ``precision`` on ``device``'s type,
    or nothing for ``float32``."""
    dtype = AUTOCAST[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)
