"""Transcripts: recorded text episodes, filtered and turned into the token samples that supervised
fine-tuning (SFT / filtered BC, :mod:`rlft.agents.sft`) trains on.

The offline stage of language agents. A transcript file is JSON Lines, one episode per line::

    {"task": "numberline", "seed": 3, "messages": [{"role": "system", ...}, {"role": "user", ...},
     {"role": "assistant", ...}, ...], "return": 1.0, "success": true}

``messages`` is the env's own chat view (``info["messages"]``). Filtered BC (the "filtered
behaviour cloning" baseline of offline RL for LLM agents, e.g. ArCHer Sec. 6) keeps the
successful or highest-return episodes; SFT fine-tunes on their assistant turns only.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from rlft.envs.text import TextEnv
from rlft.policies.llm import ChatFormat, Conversation, Generation

REQUIRED_KEYS = ("task", "seed", "messages", "return", "success")


@dataclass
class Transcript:
    """One recorded episode."""

    task: str
    seed: int
    messages: list[dict[str, str]]
    episode_return: float
    success: bool

    def as_json(self) -> dict:
        return {"task": self.task, "seed": self.seed, "messages": self.messages, "return": self.episode_return,
                "success": self.success}


def expert_actor(epsilon: float = 0.0, reasoning: bool = False) -> Callable[[TextEnv, np.random.Generator], str]:
    """The env's scripted expert, replaced by a uniformly random admissible action with prob. ``epsilon``.
    ``reasoning`` writes the expert's thought about the state first (``<thought>\nAction: <action>``),
    whichever action follows, for tasks that have one (:meth:`TextEnv.expert_thought`)."""

    def act(env: TextEnv, rng: np.random.Generator) -> str:
        thought = env.expert_thought() if reasoning else None
        if rng.random() < epsilon:
            actions = env.admissible_actions()
            action = actions[int(rng.integers(len(actions)))]
        else:
            action = env.expert_action()
        return action if thought is None else f"{thought}\nAction: {action}"

    return act


def record_transcripts(env: TextEnv, actor: Callable[[TextEnv, np.random.Generator], str], episodes: int,
                       seed: int, task: str) -> list[Transcript]:
    """Play ``episodes`` episodes (episode ``i`` reset with ``seed + i``) with a scripted ``actor``."""
    rng = np.random.default_rng(seed)
    transcripts = []
    for i in range(episodes):
        env.reset(seed=seed + i)
        done, total, info = False, 0.0, {}
        while not done:
            _, reward, terminated, truncated, info = env.step(actor(env, rng))
            total += float(reward)
            done = terminated or truncated
        transcripts.append(Transcript(task, seed + i, info["messages"], total, bool(info["success"])))
    return transcripts


def save_transcripts(transcripts: Iterable[Transcript], path: str | Path) -> None:
    """Write JSON Lines atomically (a temporary file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        for transcript in transcripts:
            f.write(json.dumps(transcript.as_json()) + "\n")
    os.replace(tmp, path)


def load_transcripts(path: str | Path) -> list[Transcript]:
    """Read a transcript file; a line without the required keys or roles is an error naming the line."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no transcript file at {path}")
    transcripts = []
    with open(path) as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            record = json.loads(line)
            missing = [k for k in REQUIRED_KEYS if k not in record]
            if missing:
                raise ValueError(f"{path}:{number}: transcript misses keys {missing} (needs {list(REQUIRED_KEYS)})")
            roles = {m.get("role") for m in record["messages"]}
            if not roles <= {"system", "user", "assistant"} or "assistant" not in roles:
                raise ValueError(f"{path}:{number}: messages need system/user/assistant roles and one assistant turn")
            transcripts.append(Transcript(record["task"], int(record["seed"]), record["messages"],
                                          float(record["return"]), bool(record["success"])))
    return transcripts


def filter_transcripts(transcripts: Sequence[Transcript], success_only: bool = False,
                       top_fraction: float = 1.0) -> list[Transcript]:
    """Filtered BC's data: successful episodes only, and/or the ``top_fraction`` by return."""
    if not 0.0 < top_fraction <= 1.0:
        raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}")
    kept = [t for t in transcripts if t.success or not success_only]
    kept = sorted(kept, key=lambda t: -t.episode_return)[: max(1, int(round(top_fraction * len(kept))))]
    if not kept or (success_only and not kept[0].success):
        raise ValueError("no transcript passes the filter")
    return kept


def replay_observations(env: TextEnv, transcript: Transcript) -> list[Any]:
    """The env's observations before each assistant turn, recovered by replaying the transcript
    from its seed (image observations are not stored in transcripts; the envs are deterministic)."""
    observation, _ = env.reset(seed=transcript.seed)
    observations = []
    for message in transcript.messages:
        if message["role"] == "assistant":
            observations.append(observation)
            observation = env.step(message["content"])[0]
    return observations


def sft_samples(transcripts: Sequence[Transcript], chat: ChatFormat, context: str = "turn",
                env: TextEnv | None = None, ends_turns: bool = True) -> list[Conversation]:
    """Token sequences with the assistant tokens (and their end-of-turn token) marked as model tokens,
    built with the same token-exact formatting as rollouts (one per turn, or one per episode).

    Prompts are the transcript's user messages, or, with ``env``, the env's own observations
    replayed from the transcript's seed (needed for image observations). ``ends_turns=False``
    (a policy restricted to action tokens, :attr:`rlft.policies.llm.LLMPolicy.ends_turns`): the end-of-turn token
    closes each reply as a prompt token, as in that policy's rollouts.
    """
    samples: list[Conversation] = []
    for transcript in transcripts:
        replies = [m["content"] for m in transcript.messages if m["role"] == "assistant"]
        if env is not None:
            observations = replay_observations(env, transcript)
        else:
            dialogue = [m for m in transcript.messages if m["role"] != "system"]
            observations = [prev["content"] for prev, m in zip(dialogue, dialogue[1:]) if m["role"] == "assistant"]
        conversation: Conversation | None = None
        for observation, text in zip(observations, replies, strict=True):
            tokens = chat.encode(text) + ([chat.end_of_turn] if ends_turns else [])
            if conversation is None or context == "turn":
                conversation = chat.start(observation)
                samples.append(conversation)
            else:
                chat.extend(conversation, observation)
            conversation.extend_reply(Generation(tokens, [0.0] * len(tokens), text, ends_turns), chat.end_of_turn)
    return samples
