"""Run an exported rlft policy with numpy and ONNX Runtime only (no torch): what a robot process embeds.

    from rlft.deploy import DeployedPolicy
    policy = DeployedPolicy("runs/<run>/export")
    policy.reset(); action = policy.act(observation)

The folder is what ``rlft-export`` writes; everything the runner does comes from its
``metadata.json``: the observation it expects, the history of observations it keeps
(``control.obs_history``, oldest first, the episode's first observation padding the start) and the
queue of actions of a chunked policy (``control.chunk`` predicted, ``control.executed_steps``
executed before the policy is asked again) and, for a policy with a ``noise`` input (diffusion),
standard normal noise drawn from its own seeded generator.
"""

from __future__ import annotations

import json
from collections import deque
from pathlib import Path

import numpy as np

__all__ = ["DeployedPolicy"]


class DeployedPolicy:
    """An exported policy: ``reset()`` at every episode start, then ``act(observation) -> action``."""

    def __init__(self, folder: str | Path, seed: int = 0):
        """``seed`` seeds the sampling noise of policies that take one (diffusion policies)."""
        import onnxruntime

        folder = Path(folder)
        path = folder / "metadata.json"
        if not path.is_file():
            raise FileNotFoundError(f"{folder} is not an rlft export: it has no metadata.json (run rlft-export first)")
        self.metadata = json.loads(path.read_text())
        self.session = onnxruntime.InferenceSession(str(folder / self.metadata["file"]),
                                                    providers=["CPUExecutionProvider"])
        control = self.metadata["control"]
        self.history, self.chunk, self.executed = control["obs_history"], control["chunk"], control["executed_steps"]
        self.frame_shape = tuple(self.metadata["observation"]["frame_shape"])
        self.action_dim = self.metadata["action"]["frame_shape"][-1]
        self._observations: deque[np.ndarray] = deque(maxlen=self.history)
        self._actions: deque[np.ndarray] = deque()
        self.noise = self.metadata.get("noise")
        self.rng = np.random.default_rng(seed)

    def reset(self) -> None:
        """Forget the observation history and queued actions (a new episode)."""
        self._observations.clear()
        self._actions.clear()

    def act(self, observation: np.ndarray) -> np.ndarray:
        """The action for one raw observation (the env's own, as its observation space gives it)."""
        observation = np.asarray(observation, dtype=np.float32)
        if observation.shape != self.frame_shape:
            raise ValueError(f"expected an observation of shape {self.frame_shape}, got {observation.shape}")
        if not self._observations:
            self._observations.extend([observation] * self.history)
        else:
            self._observations.append(observation)
        if not self._actions:
            feed = {self.metadata["observation"]["name"]: np.concatenate([o.reshape(-1) for o in self._observations])[None]}
            if self.noise is not None:
                feed[self.noise["name"]] = self.rng.standard_normal((1, *self.noise["shape"])).astype(np.float32)
            out = self.session.run([self.metadata["action"]["name"]], feed)[0]
            self._actions.extend(out.reshape(self.chunk, self.action_dim)[: self.executed])
        return self._actions.popleft()
