"""The one validated transition dataset every offline learner reads.

Keys follow D4RL: ``observations, actions, rewards, terminals, timeouts, next_observations``.
Episode boundaries are kept: an episode ends at a transition whose ``terminals`` or
``timeouts`` flag is set (the last transition always ends one). Everything is float32
except the two boolean flags.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

REQUIRED_KEYS = ("observations", "actions", "rewards", "terminals", "timeouts", "next_observations")


class DatasetError(ValueError):
    """A dataset file is missing, malformed or inconsistent; the message names file and key."""


class DatasetWarning(UserWarning):
    """A dataset that cannot be fully checked (e.g. it records no environment) is used anyway."""


@dataclass
class TransitionDataset:
    """Validated, in-memory transitions with episode boundaries and reference returns."""

    observations: np.ndarray  # [N, obs_dim] float32
    actions: np.ndarray  # [N, act_dim] float32
    rewards: np.ndarray  # [N] float32
    terminals: np.ndarray  # [N] bool, true MDP termination (no bootstrap)
    timeouts: np.ndarray  # [N] bool, episode cut by a time limit or the end of collection
    next_observations: np.ndarray  # [N, obs_dim] float32
    source: str = "<memory>"  # file path or dataset id, used in error messages
    env_id: str | None = None  # Gymnasium id the data was collected in, when known
    ref_min_score: float | None = None  # return of a random policy (normalised score 0)
    ref_max_score: float | None = None  # return of an expert policy (normalised score 100)
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key in REQUIRED_KEYS:
            value = getattr(self, key)
            if not isinstance(value, np.ndarray):
                raise DatasetError(f"{self.source}: '{key}' must be a numpy array, got {type(value).__name__}")
        n = len(self.rewards)
        if n == 0:
            raise DatasetError(f"{self.source}: dataset is empty")
        expected_ndim = {"observations": 2, "actions": 2, "rewards": 1, "terminals": 1, "timeouts": 1,
                         "next_observations": 2}
        for key, ndim in expected_ndim.items():
            value = getattr(self, key)
            if key == "rewards" and value.ndim == 2 and value.shape[1] == 1:
                value = value[:, 0]
            if key in ("terminals", "timeouts") and value.ndim == 2 and value.shape[1] == 1:
                value = value[:, 0]
            if value.ndim != ndim:
                raise DatasetError(f"{self.source}: '{key}' must have {ndim} dimensions, got shape {value.shape}")
            if len(value) != n:
                raise DatasetError(f"{self.source}: '{key}' has {len(value)} rows but 'rewards' has {n}")
            setattr(self, key, value)
        if self.next_observations.shape != self.observations.shape:
            raise DatasetError(
                f"{self.source}: 'next_observations' shape {self.next_observations.shape} does not match "
                f"'observations' shape {self.observations.shape}"
            )
        for key in ("observations", "actions", "rewards", "next_observations"):
            value = np.ascontiguousarray(getattr(self, key), dtype=np.float32)
            if not np.isfinite(value).all():
                bad = int(np.argwhere(~np.isfinite(value))[0][0])
                raise DatasetError(f"{self.source}: '{key}' has a non-finite value at row {bad}")
            setattr(self, key, value)
        self.terminals = self.terminals.astype(bool)
        self.timeouts = self.timeouts.astype(bool)
        self._check_reference_scores()

    def _check_reference_scores(self) -> None:
        if (self.ref_min_score is None) != (self.ref_max_score is None):
            raise DatasetError(f"{self.source}: give both ref_min_score and ref_max_score, or neither")
        if self.ref_min_score is not None and not self.ref_max_score > self.ref_min_score:
            raise DatasetError(
                f"{self.source}: ref_max_score ({self.ref_max_score}) must exceed ref_min_score ({self.ref_min_score})"
            )

    # ----------------------------------------------------------------- shape
    def __len__(self) -> int:
        return len(self.rewards)

    @property
    def obs_dim(self) -> int:
        return self.observations.shape[1]

    @property
    def action_dim(self) -> int:
        return self.actions.shape[1]

    # -------------------------------------------------------------- episodes
    @property
    def episode_ends(self) -> np.ndarray:
        """Indices (inclusive) of the last transition of every episode."""
        ends = np.flatnonzero(self.terminals | self.timeouts)
        if len(ends) == 0 or ends[-1] != len(self) - 1:
            ends = np.append(ends, len(self) - 1)
        return ends

    def episode_slices(self) -> Iterator[slice]:
        """One slice per episode, in order."""
        start = 0
        for end in self.episode_ends:
            yield slice(start, int(end) + 1)
            start = int(end) + 1

    def episode_returns(self) -> np.ndarray:
        """Undiscounted return of every episode."""
        cumulative = np.concatenate([[0.0], np.cumsum(self.rewards, dtype=np.float64)])
        ends = self.episode_ends + 1
        starts = np.concatenate([[0], ends[:-1]])
        return cumulative[ends] - cumulative[starts]

    # ---------------------------------------------------------------- scores
    def normalize_score(self, returns: np.ndarray | float) -> np.ndarray:
        """``100 * (return - ref_min) / (ref_max - ref_min)`` (D4RL's normalised score)."""
        if self.ref_min_score is None or self.ref_max_score is None:
            raise DatasetError(f"{self.source}: no reference returns; set ref_min_score/ref_max_score")
        return 100.0 * (np.asarray(returns, dtype=np.float64) - self.ref_min_score) / (
            self.ref_max_score - self.ref_min_score
        )

    # ------------------------------------------------------------ statistics
    def observation_stats(self, eps: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
        """Per-dimension mean and std (+``eps``) of the observations, for normalisation."""
        return self.observations.mean(0), self.observations.std(0) + eps

    def summary(self) -> dict:
        """A short description for logs and the run folder."""
        returns = self.episode_returns()
        out = {
            "source": self.source,
            "env_id": self.env_id,
            "transitions": len(self),
            "episodes": len(returns),
            "obs_dim": self.obs_dim,
            "action_dim": self.action_dim,
            "return_mean": float(returns.mean()),
            "return_std": float(returns.std()),
        }
        if self.ref_min_score is not None:
            out["normalized_score_mean"] = float(self.normalize_score(returns).mean())
        return out

    def check_spaces(self, observation_shape: tuple[int, ...], action_shape: tuple[int, ...], env_id: str) -> None:
        """Fail with a clear message when the dataset does not fit an environment's spaces."""
        if tuple(observation_shape) != (self.obs_dim,):
            raise DatasetError(
                f"{self.source}: observations have dim {self.obs_dim} but {env_id} observations have shape "
                f"{tuple(observation_shape)}"
            )
        if tuple(action_shape) != (self.action_dim,):
            raise DatasetError(
                f"{self.source}: actions have dim {self.action_dim} but {env_id} actions have shape "
                f"{tuple(action_shape)}"
            )

    def with_reference_scores(self, ref_min: float, ref_max: float) -> "TransitionDataset":
        """Set reference returns where the file carried none."""
        self.ref_min_score, self.ref_max_score = float(ref_min), float(ref_max)
        self._check_reference_scores()
        return self
