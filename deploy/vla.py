"""Run an exported VLA with numpy, ONNX Runtime and the ``tokenizers`` package (no torch).

    from rlft.deploy import DeployedVLA
    policy = DeployedVLA("runs/<run>/export")
    policy.reset(); action = policy.act({"text": "go to the red ball", "image": frame})

Each query builds the prompt as the metadata says (``prompt.before`` + the image placeholder +
the instruction + ``prompt.after``, tokenised by ``model/tokenizer.json``), runs the greedy
action decode and queues the reply's ``chunk`` actions; :meth:`query` returns the reply's
action-token indices and actions, :meth:`reply` its text (what a VLA task env steps on).
"""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from rlft.deploy import Session, onnx_session, read_metadata


class DeployedVLA:
    """An exported VLA: ``reset()`` at every episode start, then ``act(observation) -> action``."""

    def __init__(self, folder: str | Path):
        from tokenizers import Tokenizer

        folder = Path(folder)
        metadata = read_metadata(folder)
        if metadata.get("family") != "llm/vla":
            raise ValueError(f"{folder} holds a {metadata.get('family')!r} policy: run it with rlft.deploy.DeployedPolicy")
        tokenizer = Tokenizer.from_file(str(folder / metadata["prompt"]["tokenizer"]))
        self._setup(metadata, onnx_session(folder, metadata), tokenizer)

    @classmethod
    def over(cls, metadata: dict[str, Any], session: Session, tokenizer: Any) -> "DeployedVLA":
        """The runner for ``metadata`` over another session and a loaded ``tokenizers.Tokenizer``."""
        policy = cls.__new__(cls)
        policy._setup(metadata, session, tokenizer)
        return policy

    def _setup(self, metadata: dict[str, Any], session: Session, tokenizer: Any) -> None:
        self.metadata, self.session, self.tokenizer = metadata, session, tokenizer
        self.prompt, self.action = metadata["prompt"], metadata["action"]
        self.image_shape = tuple(metadata["observation"]["image"]["shape"])
        self._actions: deque[np.ndarray] = deque()

    def reset(self) -> None:
        """Forget queued actions (a new episode)."""
        self._actions.clear()

    def prompt_ids(self, instruction: str) -> np.ndarray:
        """``[1, T]`` int64 prompt ids for one instruction."""
        text = self.prompt["before"] + self.prompt["image_placeholder"] + str(instruction) + self.prompt["after"]
        return np.asarray([self.tokenizer.encode(text, add_special_tokens=False).ids], dtype=np.int64)

    def query(self, observation: Mapping[str, Any]) -> tuple[list[int], np.ndarray]:
        """The greedy reply for ``{"text", "image"}``: its action-token indices and its ``chunk`` actions."""
        for key in ("text", "image"):
            if key not in observation:
                raise KeyError(f"a VLA observation needs 'text' and 'image', it has {sorted(observation)}")
        image = np.asarray(observation["image"], dtype=np.uint8)
        if image.shape != self.image_shape:
            raise ValueError(f"expected an image of shape {self.image_shape}, got {image.shape}")
        feed = {"input_ids": self.prompt_ids(observation["text"]), "image": image[None]}
        indices, actions = self.session.run(["action_tokens", "action"], feed)
        chunk = self.action["chunk"]
        return indices[0].tolist(), actions[0].reshape(chunk, *self.action["frame_shape"])

    def reply(self, indices: list[int]) -> str:
        """The reply text of action-token indices."""
        return "".join(self.action["tokens"][i] for i in indices)

    def act(self, observation: Mapping[str, Any]) -> np.ndarray:
        """One action (a new reply whenever the last one's chunk is used up)."""
        if not self._actions:
            self._actions.extend(self.query(observation)[1])
        return self._actions.popleft()
