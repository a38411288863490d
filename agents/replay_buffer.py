"""Preallocated torch replay buffer shared by offline pretraining and online fine-tuning."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

from rlft.offline.dataset import TransitionDataset


@dataclass
class Batch:
    """A minibatch of transitions; ``dones`` is 1.0 where the MDP terminated (no bootstrap).

    Sequence batches (:meth:`ReplayBuffer.sample_sequences`) carry a leading time dimension:
    ``[L, B, ...]``, consecutive steps of one episode each.
    """

    observations: torch.Tensor  # [B, obs_dim]
    actions: torch.Tensor  # [B, act_dim]
    rewards: torch.Tensor  # [B, 1]
    next_observations: torch.Tensor  # [B, obs_dim]
    dones: torch.Tensor  # [B, 1]
    mc_returns: torch.Tensor | None = None  # [B, 1] Monte-Carlo return-to-go (-inf where unknown)

    def split(self, parts: int) -> list[Batch]:
        """``parts`` strided slices of the rows (slice ``i`` holds rows ``i, i + parts, ...``), so each
        slice of a batch drawn as dataset rows then online rows keeps the batch's mix, as rlpd's
        ``combine`` interleaves its two halves before slicing. ``parts`` must divide the batch."""
        rows = self.observations.shape[0]
        if rows % parts:
            raise ValueError(f"a batch of {rows} rows does not split into {parts} equal slices")
        values = [getattr(self, f.name) for f in fields(self)]
        return [Batch(*(None if value is None else value[i::parts] for value in values)) for i in range(parts)]


@dataclass
class ChunkBatch:
    """Action chunks (Q-chunking, Li, Zhou and Levine 2025, arXiv 2507.07969): from each start
    row, the next ``H`` actions of its episode, the discounted reward they collect and where they lead.

    A chunk stops early at its episode's end: at a terminal row it is complete (``dones`` 1, no
    bootstrap); cut by a time limit, the data's end or the newest online row it cannot be backed
    up and ``critic_valid`` is 0. ``action_valid`` marks the chunk's own actions; past its end the
    actions are the stored rows that follow (the next episode's, as qc's ``sample_sequence`` keeps
    them), which behaviour cloning weights out.
    """

    observations: torch.Tensor  # [B, obs_dim], the chunk's first state
    actions: torch.Tensor  # [B, H, act_dim], the stored rows from the start on
    action_valid: torch.Tensor  # [B, H] float 1/0
    rewards: torch.Tensor  # [B, 1]: sum_i gamma^i r_i over the chunk's steps
    next_observations: torch.Tensor  # [B, obs_dim]: the state after its last step
    dones: torch.Tensor  # [B, 1]: it ended at a terminal
    discounts: torch.Tensor  # [B, 1]: gamma^(steps taken)
    critic_valid: torch.Tensor  # [B, 1]: its target is known (all H steps, or it ended at a terminal)


class ReplayBuffer:
    """Ring buffer of transitions held in preallocated tensors on ``device``.

    Rows ``[0, num_offline)`` hold a loaded dataset and are never overwritten: online
    transitions cycle through the remaining capacity. Sampling draws indices with torch's
    global RNG, so seeding torch (and restoring its state on resume) fixes every batch.

    Rewards are stored as ``reward_scale * r + reward_bias`` for dataset and online
    transitions alike. ``mc_returns`` holds Monte-Carlo returns-to-go (Cal-QL): computed for
    the dataset on load and for online episodes when they end (:meth:`end_episode`);
    ``-inf`` marks rows whose episode has not ended yet, which disables calibration there.
    ``ends`` marks the last row of every episode (terminated, truncated or cut), which is what
    :meth:`sample_sequences` needs to keep sequences inside one episode. ``versions`` tags each
    online row with the policy version (the learner's update count) that collected it; dataset
    rows hold -1.
    """

    _FIELDS = ("observations", "actions", "rewards", "next_observations", "dones", "mc_returns")
    _STORED = (*_FIELDS, "ends", "versions")
    _MAX_REJECTION_ROUNDS = 100  # rejection-sampling rounds before a sampler gives up

    @staticmethod
    def bytes_needed(obs_dim: int, action_dim: int, capacity: int) -> int:
        """The memory the buffer's tensors take: float32 observations, next observations, actions,
        reward, done and MC return, a bool end flag and an int64 version per row."""
        return capacity * (4 * (2 * obs_dim + action_dim + 3) + 1 + 8)

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        capacity: int,
        device: str | torch.device = "cpu",
        reward_scale: float = 1.0,
        reward_bias: float = 0.0,
    ):
        if capacity <= 0:
            raise ValueError(f"capacity must be positive, got {capacity}")
        self.obs_dim, self.action_dim, self.capacity = obs_dim, action_dim, capacity
        self.reward_scale, self.reward_bias = reward_scale, reward_bias
        self.device = torch.device(device)
        self.observations = torch.zeros((capacity, obs_dim), dtype=torch.float32, device=self.device)
        self.actions = torch.zeros((capacity, action_dim), dtype=torch.float32, device=self.device)
        self.rewards = torch.zeros((capacity, 1), dtype=torch.float32, device=self.device)
        self.next_observations = torch.zeros((capacity, obs_dim), dtype=torch.float32, device=self.device)
        self.dones = torch.zeros((capacity, 1), dtype=torch.float32, device=self.device)
        self.mc_returns = torch.full((capacity, 1), -float("inf"), dtype=torch.float32, device=self.device)
        self.ends = torch.zeros(capacity, dtype=torch.bool, device=self.device)
        self.versions = torch.full((capacity,), -1, dtype=torch.long, device=self.device)
        # A CPU buffer is also written through numpy views of the same memory: an online step stores
        # one row, and numpy's slice assignment costs a fraction of torch's indexing.
        self._host_views = {f: getattr(self, f).numpy() for f in self._STORED} if self.device.type == "cpu" else None
        self.num_offline = 0
        self.size = 0
        self._cursor = 0  # next online write position (>= num_offline)
        self._finished_online = 0  # online rows with a known return-to-go

    def __len__(self) -> int:
        return self.size

    @property
    def num_online(self) -> int:
        return self.size - self.num_offline

    def load_dataset(
        self,
        dataset: TransitionDataset,
        obs_mean: np.ndarray | None = None,
        obs_std: np.ndarray | None = None,
        mc_returns: np.ndarray | None = None,
    ) -> None:
        """Copy a dataset into the (empty) buffer, normalising observations if stats are given.

        ``mc_returns`` are the transitions' returns-to-go computed on the stored (scaled and
        shifted) rewards; see :func:`rlft.offline.returns.returns_to_go`.
        """
        if self.size:
            raise RuntimeError("load_dataset needs an empty buffer")
        if dataset.obs_dim != self.obs_dim or dataset.action_dim != self.action_dim:
            raise ValueError(
                f"{dataset.source}: dataset dims (obs {dataset.obs_dim}, action {dataset.action_dim}) do not match "
                f"the buffer (obs {self.obs_dim}, action {self.action_dim})"
            )
        n = len(dataset)
        if n > self.capacity:
            raise ValueError(f"{dataset.source}: {n} transitions do not fit a buffer of capacity {self.capacity}")
        obs, next_obs = dataset.observations, dataset.next_observations
        if obs_mean is not None and obs_std is not None:
            obs, next_obs = (obs - obs_mean) / obs_std, (next_obs - obs_mean) / obs_std
        self.observations[:n] = torch.as_tensor(obs, dtype=torch.float32)
        self.actions[:n] = torch.as_tensor(dataset.actions)
        self.rewards[:n, 0] = torch.as_tensor(self.transform_rewards(dataset.rewards))
        self.next_observations[:n] = torch.as_tensor(next_obs, dtype=torch.float32)
        self.dones[:n, 0] = torch.as_tensor(dataset.terminals, dtype=torch.float32)
        self.ends[:n] = False
        self.ends[torch.as_tensor(dataset.episode_ends, dtype=torch.long)] = True
        if mc_returns is not None:
            if len(mc_returns) != n:
                raise ValueError(f"{len(mc_returns)} Monte-Carlo returns for {n} transitions")
            self.mc_returns[:n, 0] = torch.as_tensor(mc_returns, dtype=torch.float32)
        self.num_offline = self.size = self._cursor = n

    def discard_offline(self) -> None:
        """Forget the dataset rows (WSRL, ``offline_data_ratio=0``): the whole capacity
        becomes online storage and the buffer starts empty."""
        if self.num_online:
            raise RuntimeError("discard_offline must come before any online transition")
        self.num_offline = self.size = self._cursor = self._finished_online = 0

    def transform_rewards(self, rewards: np.ndarray) -> np.ndarray:
        """The stored reward ``reward_scale * r + reward_bias`` (float32)."""
        return (np.asarray(rewards, dtype=np.float32) * self.reward_scale + self.reward_bias).astype(np.float32)

    def add(
        self, obs: np.ndarray, action: np.ndarray, reward: np.ndarray, next_obs: np.ndarray, terminated: np.ndarray,
        version: int = -1,
    ) -> torch.Tensor:
        """Append a batch of online transitions (leading dim: transitions) collected by policy
        ``version``; returns their rows.

        Online steps add one transition at a time, so the common case (free rows after the newest
        one) writes slices and reads nothing back; only a ring that wraps onto stored rows checks
        which of them held finished episodes."""
        obs = np.atleast_2d(obs)
        n = obs.shape[0]
        if self.capacity - self.num_offline < n:
            raise ValueError("no online capacity left: increase the buffer capacity")
        start = self._cursor
        if self.size < self.capacity and start + n <= self.capacity:  # free rows: cursor == size here
            rows: slice | torch.Tensor = slice(start, start + n)
            idx = torch.arange(start, start + n, device=self.device)
            self._cursor = start + n
        else:
            rows = idx = self._online_indices(n)
            overwritten = idx[idx < self.size]
            self._finished_online -= int(torch.isfinite(self.mc_returns[overwritten, 0]).sum())
        self._write(rows, {
            "observations": obs, "actions": np.atleast_2d(action), "next_observations": np.atleast_2d(next_obs),
            "rewards": self.transform_rewards(np.atleast_1d(reward))[:, None],
            "dones": np.atleast_1d(terminated)[:, None], "mc_returns": -np.inf, "ends": False, "versions": version,
        })
        self.size = min(self.size + n, self.capacity)
        return idx

    def _write(self, rows: slice | torch.Tensor, columns: dict[str, Any]) -> None:
        """``field[rows] = value`` for every column (arrays or scalars, cast to the field's dtype)."""
        if self._host_views is not None:
            at = rows if isinstance(rows, slice) else rows.numpy()
            for name, value in columns.items():
                self._host_views[name][at] = value
            return
        for name, value in columns.items():
            field = getattr(self, name)
            field[rows] = torch.as_tensor(value, dtype=field.dtype, device=self.device)

    def end_episode(self, rows: torch.Tensor, returns: np.ndarray) -> None:
        """An online episode stored in ``rows`` (in order) just ended: fill in its returns-to-go
        and mark its last row as an episode end."""
        self._finished_online -= int(torch.isfinite(self.mc_returns[rows, 0]).sum())
        self.mc_returns[rows, 0] = torch.as_tensor(returns, dtype=torch.float32, device=self.device)
        self._finished_online += len(rows)
        self.ends[rows[-1]] = True

    def _online_indices(self, n: int) -> torch.Tensor:
        online_capacity = self.capacity - self.num_offline
        start = self._cursor - self.num_offline
        idx = (torch.arange(start, start + n) % online_capacity) + self.num_offline
        self._cursor = int(idx[-1]) + 1
        return idx.to(self.device)

    def sample(self, batch_size: int, offline_ratio: float | None = None, finished_only: bool = False) -> Batch:
        """A minibatch of ``batch_size`` rows.

        ``offline_ratio=None`` samples uniformly over everything stored. A number fixes the
        share drawn from the dataset rows: ``round(offline_ratio * batch_size)`` offline rows
        and the rest online, each uniform within its part (RLPD's symmetric sampling is
        0.5; 0 never touches the dataset, as in WSRL). ``finished_only`` draws online rows only
        from finished episodes, whose Monte-Carlo returns are known (Cal-QL's code inserts whole
        trajectories only); see :attr:`num_finished_online`.
        """
        if self.size == 0:
            raise RuntimeError("cannot sample from an empty replay buffer")
        if offline_ratio is None and not finished_only:
            idx = torch.randint(0, self.size, (batch_size,), device=self.device)
        else:
            n_off = self._offline_count(batch_size, offline_ratio)
            parts = []
            if n_off:
                parts.append(torch.randint(0, self.num_offline, (n_off,), device=self.device))
            if n_off < batch_size:
                online = (self._finished_rows(batch_size - n_off) if finished_only else
                          torch.randint(self.num_offline, self.size, (batch_size - n_off,), device=self.device))
                parts.append(online)
            idx = torch.cat(parts)
        return Batch(*(getattr(self, f)[idx] for f in self._FIELDS))

    @property
    def num_finished_online(self) -> int:
        """Online rows whose episode has ended (their Monte-Carlo return is known)."""
        return self._finished_online

    def _count_finished_online(self) -> None:
        self._finished_online = int(torch.isfinite(self.mc_returns[self.num_offline:self.size]).sum())

    def _finished_rows(self, count: int) -> torch.Tensor:
        """``count`` online rows drawn uniformly from finished episodes (rejection sampling: the
        unfinished rows are the running episode's, a small share of the online rows)."""
        if not self.num_finished_online:
            raise RuntimeError("no online episode has finished yet")
        rows = torch.randint(self.num_offline, self.size, (count,), device=self.device)
        for _ in range(self._MAX_REJECTION_ROUNDS):
            bad = ~torch.isfinite(self.mc_returns[rows, 0])
            if not bad.any():
                return rows
            rows[bad] = torch.randint(self.num_offline, self.size, (int(bad.sum()),), device=self.device)
        raise RuntimeError("could not draw online rows of finished episodes")

    def sample_sequences(self, batch_size: int, length: int, offline_ratio: float | None = None) -> Batch:
        """``batch_size`` runs of ``length`` consecutive transitions of one episode, as a
        time-major :class:`Batch` (``[length, batch_size, ...]``); world-model learners train on them.

        A run may end at an episode's last transition (a terminal one included) but never
        crosses it, nor the newest online row into the oldest of a wrapped ring. Starts are
        uniform over the valid ones (rejection sampling with torch's RNG); ``offline_ratio``
        splits the batch between dataset and online rows as in :meth:`sample`.
        """
        if length < 1:
            raise ValueError(f"sequence length must be >= 1, got {length}")
        n_off = self._offline_count(batch_size, offline_ratio)
        parts = []
        if n_off:
            parts.append(self._sequence_starts(n_off, length, 0, self.num_offline))
        if n_off < batch_size:
            parts.append(self._sequence_starts(batch_size - n_off, length, self.num_offline, self.size))
        rows = torch.cat(parts).unsqueeze(0) + torch.arange(length, device=self.device).unsqueeze(1)  # [L, B]
        return Batch(*(getattr(self, f)[rows] for f in self._FIELDS))

    def sample_chunks(self, batch_size: int, horizon: int, discount: float,
                      offline_ratio: float | None = None) -> ChunkBatch:
        """``batch_size`` :class:`ChunkBatch` rows of ``horizon`` steps, starts uniform over the
        stored rows (``offline_ratio`` splits them as in :meth:`sample`). Unlike
        :meth:`sample_sequences`, a chunk may start close to its episode's end: it stops there,
        as the reference's ``sample_sequence`` masks what lies past it (qc utils/datasets.py)."""
        n_off = self._offline_count(batch_size, offline_ratio)
        parts, limits = [], []
        if n_off:
            parts.append(torch.randint(0, self.num_offline, (n_off,), device=self.device))
            limits.append(torch.full((n_off,), self.num_offline, device=self.device))
        if n_off < batch_size:
            online = torch.randint(self.num_offline, self.size, (batch_size - n_off,), device=self.device)
            parts.append(online)
            # the newest row is the cursor's predecessor: a chunk from before it stops there, one from the
            # older rows of a wrapped ring at the end of storage
            limits.append(torch.where(online < self._cursor, self._cursor, self.size))
        starts, limit = torch.cat(parts), torch.cat(limits)
        steps = torch.arange(horizon, device=self.device)
        rows = starts.unsqueeze(1) + steps  # [B, H]
        inside = rows < limit.unsqueeze(1)
        rows = torch.where(inside, rows, starts.unsqueeze(1))
        ended_before = torch.cumsum(self.ends[rows].long() * inside, 1) - (self.ends[rows].long() * inside)
        valid = inside & (ended_before == 0)  # [B, H]: the step exists in the chunk's episode
        taken = valid.sum(1)
        last = rows.gather(1, (taken - 1).unsqueeze(1)).squeeze(1)
        weights = valid.float() * discount ** steps.float()
        dones = self.dones[last]
        complete = (taken == horizon).unsqueeze(1) | (dones > 0)
        return ChunkBatch(
            observations=self.observations[starts],
            actions=self.actions[rows],
            action_valid=valid.float(),
            rewards=(self.rewards[rows, 0] * weights).sum(1, keepdim=True),
            next_observations=self.next_observations[last],
            dones=dones,
            discounts=(discount ** taken.float()).unsqueeze(1),
            critic_valid=complete.float(),
        )

    def _offline_count(self, batch_size: int, offline_ratio: float | None) -> int:
        """How many of ``batch_size`` rows come from the dataset (``None``: in proportion to storage)."""
        if self.size == 0:
            raise RuntimeError("cannot sample from an empty replay buffer")
        if offline_ratio is None:
            return int(torch.binomial(torch.tensor(float(batch_size)), torch.tensor(self.num_offline / self.size)))
        if not 0.0 <= offline_ratio <= 1.0:
            raise ValueError(f"offline_ratio must be in [0, 1], got {offline_ratio}")
        n_off = round(offline_ratio * batch_size)
        if n_off and not self.num_offline:
            raise RuntimeError(f"offline_ratio={offline_ratio} but the buffer holds no dataset")
        if n_off < batch_size and not self.num_online:
            raise RuntimeError("no online transitions to sample yet")
        return n_off

    def _sequence_starts(self, count: int, length: int, lo: int, hi: int) -> torch.Tensor:
        """``count`` start rows in ``[lo, hi - length]`` whose runs stay inside one episode."""
        last_start = hi - length
        if last_start < lo:
            raise RuntimeError(f"rows [{lo}, {hi}) hold fewer than {length} transitions: cannot sample sequences")
        starts = torch.randint(lo, last_start + 1, (count,), device=self.device)
        offsets = torch.arange(length - 1, device=self.device)
        newest = self._cursor - 1 if lo >= self.num_offline and self.size == self.capacity else None
        for _ in range(self._MAX_REJECTION_ROUNDS):
            inner = starts.unsqueeze(1) + offsets  # rows that must not end an episode
            bad = self.ends[inner].any(1)
            if newest is not None:
                bad |= (inner == newest).any(1)
            if not bad.any():
                return starts
            starts[bad] = torch.randint(lo, last_start + 1, (int(bad.sum()),), device=self.device)
        raise RuntimeError(
            f"could not draw {length}-step sequences inside single episodes from rows [{lo}, {hi}): "
            "are the episodes shorter than the sequence length?"
        )

    # ------------------------------------------------------------ checkpoints
    def online_state_dict(self) -> dict[str, Any]:
        """The online part only: offline rows are reloaded from the dataset on resume."""
        lo, hi = self.num_offline, self.size
        state: dict[str, Any] = {f: getattr(self, f)[lo:hi].cpu().clone() for f in self._STORED}
        state.update(num_offline=self.num_offline, size=self.size, cursor=self._cursor)
        return state

    def load_online_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`online_state_dict` into a buffer that already holds the same dataset."""
        if state["num_offline"] == 0 and self.num_offline:
            self.discard_offline()
        if state["num_offline"] != self.num_offline:
            raise ValueError(
                f"checkpoint buffer was built on {state['num_offline']} offline transitions, this one on {self.num_offline}"
            )
        lo, hi = self.num_offline, state["size"]
        for f in self._STORED:
            getattr(self, f)[lo:hi] = state[f].to(self.device)
        self.size, self._cursor = state["size"], state["cursor"]
        self._count_finished_online()
