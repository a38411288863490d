"""Run an exported VLA with numpy, ONNX Runtime and the ``tokenizers`` package (no torch).

    from rlft.deploy import DeployedVLA
    policy = DeployedVLA("runs/<run>/export")
    policy.reset(); action = policy.act({"text": "go to the red ball", "image": frame})

Each query builds the prompt as the metadata says (``prompt.before`` + the image placeholder +
the instruction + ``prompt.after``, tokenised by ``model/tokenizer.json``), runs the greedy
action decode and queues the reply's ``chunk`` actions; :meth:`query` returns the reply's
action-token indices and actions, :meth:`reply` its text (what a VLA task env steps on). As for
control policies, every value of the metadata is checked and only files inside the folder are
opened (:mod:`rlft.deploy.metadata`).
"""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from rlft.deploy import Session, action_chunk, onnx_session
from rlft.deploy.metadata import MAX_CHUNK, Fields, InvalidExportError, read_metadata


class DeployedVLA:
    """An exported VLA: ``reset()`` at every episode start, then ``act(observation) -> action``."""

    def __init__(self, folder: str | Path):
        from tokenizers import Tokenizer

        folder = Path(folder)
        metadata = read_metadata(folder)
        self._setup(metadata)
        graph, tokenizer = metadata.file("file", folder), metadata.object("prompt").file("tokenizer", folder)
        self.tokenizer = Tokenizer.from_file(str(tokenizer))
        self.session = onnx_session(graph)

    @classmethod
    def over(cls, metadata: dict[str, Any], session: Session, tokenizer: Any) -> "DeployedVLA":
        """The runner for ``metadata`` over another session and a loaded ``tokenizers.Tokenizer``."""
        policy = cls.__new__(cls)
        policy._setup(Fields(metadata, f"the metadata given to {cls.__name__}.over"))
        policy.session, policy.tokenizer = session, tokenizer
        return policy

    def _setup(self, metadata: Fields) -> None:
        """Read (and so check) every value the runner uses, before anything is opened."""
        family = metadata.string("family")
        if family != "llm/vla":
            metadata.refuse("family", family, "'llm/vla' (a control policy: run it with rlft.deploy.DeployedPolicy)")
        self.metadata, self.source = metadata.data, metadata.source
        prompt, action = metadata.object("prompt"), metadata.object("action")
        self.before, self.placeholder, self.after = (prompt.string(k) for k in ("before", "image_placeholder", "after"))
        self.image_shape = metadata.object("observation").object("image").shape("shape")
        self.chunk = action.count("chunk", MAX_CHUNK, "MAX_CHUNK")
        self.action_shape = (self.chunk, *action.shape("frame_shape", copies=self.chunk))
        self.tokens = action.strings("tokens")
        self._actions: deque[np.ndarray] = deque()

    def reset(self) -> None:
        """Forget queued actions (a new episode)."""
        self._actions.clear()

    def prompt_ids(self, instruction: str) -> np.ndarray:
        """``[1, T]`` int64 prompt ids for one instruction."""
        text = self.before + self.placeholder + str(instruction) + self.after
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
        return indices[0].tolist(), action_chunk(actions[0], self.action_shape, self.source,
                                                 "action.chunk and action.frame_shape")

    def reply(self, indices: list[int]) -> str:
        """The reply text of action-token indices (the graph's choice among ``action.tokens``)."""
        if not all(0 <= i < len(self.tokens) for i in indices):
            raise InvalidExportError(f"{self.source}: the graph chose action tokens {indices}, action.tokens has "
                                     f"{len(self.tokens)}")
        return "".join(self.tokens[i] for i in indices)

    def act(self, observation: Mapping[str, Any]) -> np.ndarray:
        """One action (a new reply whenever the last one's chunk is used up)."""
        if not self._actions:
            self._actions.extend(self.query(observation)[1])
        return self._actions.popleft()
