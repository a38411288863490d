"""Monte-Carlo returns-to-go, the reference values of Cal-QL's calibration.

Cal-QL (Nakamoto et al. 2023, arXiv 2303.05479, Sec. 5 and App. C) lower-bounds the
conservative penalty with ``V^mu(s)``, estimated by the discounted return-to-go of the
behaviour trajectory. Episodes cut by a time limit are summed up to the cut (no
bootstrap). In the sparse-reward case, an episode that never reaches the goal collects
the failure reward forever, so its return-to-go is the infinite-horizon value
``r_fail / (1 - gamma)`` at every step (the authors' ``is_sparse_reward`` rule).
"""

from __future__ import annotations

import numpy as np


def episode_returns_to_go(
    rewards: np.ndarray, discount: float, sparse_fail_reward: float | None = None
) -> np.ndarray:
    """``G_t = sum_k gamma^k r_{t+k}`` within one episode (float64 accumulation).

    With ``sparse_fail_reward`` set, an episode whose rewards all equal it is a failure
    and gets ``sparse_fail_reward / (1 - discount)`` everywhere.
    """
    rewards = np.asarray(rewards, dtype=np.float64)
    if sparse_fail_reward is not None and np.all(rewards == sparse_fail_reward):
        return np.full(len(rewards), sparse_fail_reward / (1.0 - discount), dtype=np.float32)
    out = np.empty(len(rewards), dtype=np.float64)
    running = 0.0
    for t in range(len(rewards) - 1, -1, -1):
        running = rewards[t] + discount * running
        out[t] = running
    return out.astype(np.float32)


def returns_to_go(
    rewards: np.ndarray, episode_ends: np.ndarray, discount: float, sparse_fail_reward: float | None = None
) -> np.ndarray:
    """Returns-to-go of a flat transition array whose episodes end at ``episode_ends`` (inclusive indices)."""
    out = np.empty(len(rewards), dtype=np.float32)
    start = 0
    for end in episode_ends:
        out[start : end + 1] = episode_returns_to_go(rewards[start : end + 1], discount, sparse_fail_reward)
        start = end + 1
    if start != len(rewards):
        raise ValueError(f"episode_ends stop at {start}, but there are {len(rewards)} transitions")
    return out
