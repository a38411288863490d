"""Run an exported rlft policy with numpy and ONNX Runtime only (no torch): what a robot process embeds.

    from rlft.deploy import DeployedPolicy
    policy = DeployedPolicy("runs/<run>/export")
    policy.reset(); action = policy.act(observation)

The folder is what ``rlft-export`` writes; everything the runner does comes from its
``metadata.json``: the observation it expects (an array, or for a Dict observation space the
dict, whose entries ``observation.layout`` lists in the order they are flattened), the history of observations it keeps
(``control.obs_history``, oldest first, the episode's first observation padding the start), the
queue of actions of a chunked policy (``control.chunk`` predicted, ``control.executed_steps``
executed before the policy is asked again) and the graph's further ``inputs``: standard normal
``noise`` (diffusion policies) drawn from the runner's own seeded generator, and ``state`` the
graph returns as ``<name>_next`` and gets back at the next call, zeros after ``reset()`` (the
residual policy's base chunk). The folder is untrusted input: every value is checked, and only
files inside the folder are opened (:mod:`rlft.deploy.metadata`).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Protocol

import numpy as np

from rlft.deploy.metadata import (INPUT_DTYPES, MAX_CHUNK, MAX_OBS_HISTORY, Fields, InvalidExportError,
                                  read_metadata)

__all__ = ["DeployedPolicy", "DeployedVLA", "InvalidExportError", "Session"]


class Session(Protocol):
    """What runs the graph: an ``onnxruntime.InferenceSession`` or anything with its ``run``."""

    def run(self, output_names: list[str] | None, input_feed: dict[str, np.ndarray]) -> list[np.ndarray]: ...


def onnx_session(path: Path) -> Session:
    """An ONNX Runtime session (CPU) of the export's graph, ``path`` as :meth:`Fields.file` checked it."""
    import onnxruntime

    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def action_chunk(action: np.ndarray, shape: tuple[int, ...], source: str, keys: str) -> np.ndarray:
    """One query's flat ``action`` output as ``shape`` (chunk, *frame): a graph whose output holds
    another number of values than the metadata's ``keys`` declare is refused by name."""
    if action.size != math.prod(shape):
        raise InvalidExportError(f"{source}: the graph returned {action.size} action values, {keys} declare {shape}")
    return action.reshape(shape)


@dataclass(frozen=True)
class InputSpec:
    """One of the graph's further inputs (an entry of ``metadata.json``'s ``inputs``)."""

    name: str
    kind: str  # "noise": standard normal at every call; "state": zeros after reset, then ``output``'s value
    shape: tuple[int, ...]  # per sample
    dtype: str
    output: str | None  # state: the graph output that is fed back

    @classmethod
    def read(cls, spec: Fields) -> "InputSpec":
        kind = spec.string("kind", INPUT_DTYPES)
        return cls(spec.string("name"), kind, spec.shape("shape"), spec.string("dtype", INPUT_DTYPES[kind]),
                   spec.string("output") if kind == "state" else None)


class DeployedPolicy:
    """An exported policy: ``reset()`` at every episode start, then ``act(observation) -> action``."""

    def __init__(self, folder: str | Path, seed: int = 0):
        """``seed`` seeds the sampling noise of policies that take one (diffusion policies)."""
        metadata = read_metadata(folder)
        self._setup(metadata, seed)
        self.session = onnx_session(metadata.file("file", Path(folder)))

    @classmethod
    def over(cls, metadata: dict[str, Any], session: Session, seed: int = 0) -> "DeployedPolicy":
        """The runner for ``metadata`` over another session (the exporter drives the PyTorch graph so)."""
        policy = cls.__new__(cls)
        policy._setup(Fields(metadata, f"the metadata given to {cls.__name__}.over"), seed)
        policy.session = session
        return policy

    def _setup(self, metadata: Fields, seed: int) -> None:
        """Read (and so check) every value the runner uses, before anything is allocated."""
        if metadata.string("family") == "llm/vla":
            metadata.refuse("family", "llm/vla", "a control policy's family (run a VLA with rlft.deploy.DeployedVLA)")
        self.metadata, self.source = metadata.data, metadata.source
        control, observation = metadata.object("control"), metadata.object("observation")
        self.history = control.count("obs_history", MAX_OBS_HISTORY, "MAX_OBS_HISTORY")
        self.chunk = control.count("chunk", MAX_CHUNK, "MAX_CHUNK")
        self.executed = control.count("executed_steps", self.chunk, "control.chunk")
        self.observation_name = observation.string("name")
        self.frame_shape = observation.shape("frame_shape", copies=self.history)
        layout = observation.objects("layout", optional=True)
        self.layout = None if layout is None else [(part.string("key"), part.shape("shape")) for part in layout]
        if self.layout is not None and sum(math.prod(shape) for _, shape in self.layout) != math.prod(self.frame_shape):
            observation.refuse("layout", observation.data["layout"],
                               f"entries of {math.prod(self.frame_shape)} values in all (observation.frame_shape)")
        action = metadata.object("action")
        self.action_shape = (self.chunk, *action.shape("frame_shape", copies=self.chunk))
        self.inputs = [InputSpec.read(spec) for spec in metadata.objects("inputs", optional=True) or []]
        self.states = [spec for spec in self.inputs if spec.kind == "state"]
        self.outputs = [action.string("name")] + [spec.output for spec in self.states]
        self.rng = np.random.default_rng(seed)
        self._observations: deque[np.ndarray] = deque(maxlen=self.history)
        self._actions: deque[np.ndarray] = deque()
        self._state: dict[str, np.ndarray] = {}
        self.reset()

    def reset(self) -> None:
        """Forget the observation history, queued actions and carried state (a new episode)."""
        self._observations.clear()
        self._actions.clear()
        self._state = {spec.name: np.zeros((1, *spec.shape), dtype=spec.dtype) for spec in self.states}

    def flatten(self, observation: np.ndarray | Mapping[str, np.ndarray]) -> np.ndarray:
        """One raw observation as the graph's flat float32 frame (a dict's entries in layout order)."""
        if self.layout is None:
            return np.asarray(observation, dtype=np.float32)
        if not isinstance(observation, Mapping):
            raise TypeError(f"expected a dict observation with keys {[key for key, _ in self.layout]}, "
                            f"got {type(observation).__name__}")
        parts = []
        for key, shape in self.layout:
            if key not in observation:
                raise KeyError(f"observation has no {key!r} (it has {sorted(observation)})")
            value = np.asarray(observation[key])
            if value.shape != shape:
                raise ValueError(f"observation[{key!r}] has shape {value.shape}, expected {shape}")
            parts.append(value.reshape(-1).astype(np.float32))
        return np.concatenate(parts)

    def act(self, observation: np.ndarray | Mapping[str, np.ndarray]) -> np.ndarray:
        """The action for one raw observation (the env's own, as its observation space gives it)."""
        observation = self.flatten(observation)
        if observation.shape != self.frame_shape:
            raise ValueError(f"expected an observation of shape {self.frame_shape}, got {observation.shape}")
        if not self._observations:
            self._observations.extend([observation] * self.history)
        else:
            self._observations.append(observation)
        if not self._actions:
            stacked = np.concatenate([o.reshape(-1) for o in self._observations])[None]
            feed = {self.observation_name: stacked}
            for spec in self.inputs:
                if spec.kind == "noise":
                    feed[spec.name] = self.rng.standard_normal((1, *spec.shape)).astype(spec.dtype)
                else:
                    feed[spec.name] = self._state[spec.name]
            action, *state = self.session.run(self.outputs, feed)
            self._state = {spec.name: value for spec, value in zip(self.states, state)}
            chunk = action_chunk(action, self.action_shape, self.source, "control.chunk and action.frame_shape")
            self._actions.extend(chunk[: self.executed])
        return self._actions.popleft()


from rlft.deploy.vla import DeployedVLA  # noqa: E402  (it needs Session)
