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
residual policy's base chunk).
"""

from __future__ import annotations

import json
from collections import deque
from pathlib import Path
from typing import Any, Mapping, Protocol

import numpy as np

__all__ = ["DeployedPolicy", "DeployedVLA", "Session"]


class Session(Protocol):
    """What runs the graph: an ``onnxruntime.InferenceSession`` or anything with its ``run``."""

    def run(self, output_names: list[str] | None, input_feed: dict[str, np.ndarray]) -> list[np.ndarray]: ...


def read_metadata(folder: str | Path) -> dict[str, Any]:
    """An export folder's ``metadata.json``."""
    path = Path(folder) / "metadata.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not an rlft export: it has no metadata.json (run rlft-export first)")
    return json.loads(path.read_text())


def onnx_session(folder: str | Path, metadata: dict[str, Any]) -> Session:
    """An ONNX Runtime session of the export's graph (CPU)."""
    import onnxruntime

    return onnxruntime.InferenceSession(str(Path(folder) / metadata["file"]), providers=["CPUExecutionProvider"])


class DeployedPolicy:
    """An exported policy: ``reset()`` at every episode start, then ``act(observation) -> action``."""

    def __init__(self, folder: str | Path, seed: int = 0):
        """``seed`` seeds the sampling noise of policies that take one (diffusion policies)."""
        metadata = read_metadata(folder)
        self._setup(metadata, onnx_session(folder, metadata), seed)

    @classmethod
    def over(cls, metadata: dict[str, Any], session: Session, seed: int = 0) -> "DeployedPolicy":
        """The runner for ``metadata`` over another session (the exporter drives the PyTorch graph so)."""
        policy = cls.__new__(cls)
        policy._setup(metadata, session, seed)
        return policy

    def _setup(self, metadata: dict[str, Any], session: Session, seed: int) -> None:
        self.metadata, self.session = metadata, session
        control = metadata["control"]
        self.history, self.chunk, self.executed = control["obs_history"], control["chunk"], control["executed_steps"]
        self.frame_shape = tuple(metadata["observation"]["frame_shape"])
        self.layout = metadata["observation"].get("layout")
        self.action_dim = metadata["action"]["frame_shape"][-1]
        self.inputs = metadata.get("inputs", [])
        self.outputs = [metadata["action"]["name"]] + [i["output"] for i in self.inputs if i["kind"] == "state"]
        self.rng = np.random.default_rng(seed)
        self._observations: deque[np.ndarray] = deque(maxlen=self.history)
        self._actions: deque[np.ndarray] = deque()
        self._state: dict[str, np.ndarray] = {}
        self.reset()

    def reset(self) -> None:
        """Forget the observation history, queued actions and carried state (a new episode)."""
        self._observations.clear()
        self._actions.clear()
        self._state = {i["name"]: np.zeros((1, *i["shape"]), dtype=i["dtype"])
                       for i in self.inputs if i["kind"] == "state"}

    def flatten(self, observation: np.ndarray | Mapping[str, np.ndarray]) -> np.ndarray:
        """One raw observation as the graph's flat float32 frame (a dict's entries in layout order)."""
        if self.layout is None:
            return np.asarray(observation, dtype=np.float32)
        if not isinstance(observation, Mapping):
            raise TypeError(f"expected a dict observation with keys {[p['key'] for p in self.layout]}, "
                            f"got {type(observation).__name__}")
        parts = []
        for part in self.layout:
            if part["key"] not in observation:
                raise KeyError(f"observation has no {part['key']!r} (it has {sorted(observation)})")
            value = np.asarray(observation[part["key"]])
            if value.shape != tuple(part["shape"]):
                raise ValueError(f"observation[{part['key']!r}] has shape {value.shape}, expected {tuple(part['shape'])}")
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
            feed = {self.metadata["observation"]["name"]: stacked}
            for spec in self.inputs:
                if spec["kind"] == "noise":
                    feed[spec["name"]] = self.rng.standard_normal((1, *spec["shape"])).astype(spec["dtype"])
                else:
                    feed[spec["name"]] = self._state[spec["name"]]
            action, *state = self.session.run(self.outputs, feed)
            self._state = {spec["name"]: value for spec, value in
                           zip([i for i in self.inputs if i["kind"] == "state"], state)}
            self._actions.extend(action.reshape(self.chunk, self.action_dim)[: self.executed])
        return self._actions.popleft()


from rlft.deploy.vla import DeployedVLA  # noqa: E402  (it needs Session)
