"""Multi-turn rollouts of a language policy in a vector of text envs.

Episodes are played in *waves*: every sub-env is reset with its own seed, replies are sampled
for the envs still playing (one batched ``generate`` per turn), and the wave ends when all
episodes have ended. Finished sub-envs get an empty action that is never recorded, so the
vector env's autoreset does not leak into the data. Giving ``group_size`` consecutive envs the
same seed makes GRPO's groups: several attempts at the same task instance.

Two contexts (``TextRolloutConfig.context``):

- ``"episode"``: one token sequence per episode, turns concatenated token-exactly
  (:class:`rlft.policies.llm.Conversation`); the policy sees the whole dialogue.
- ``"turn"``: each turn is prompted with the system prompt and the current observation only
  (RL4VLM's setting; the text tasks here make their observations Markov).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Literal

import gymnasium as gym
import numpy as np
import torch

from rlft.policies.llm import ChatFormat, Conversation, Generation, LLMPolicy, split_observation, unbatch_observations


@dataclass
class TextRolloutConfig:
    """How text episodes are played."""

    context: Literal["episode", "turn"] = "turn"
    group_size: int = 1  # consecutive envs sharing a reset seed (GRPO groups)

    def __post_init__(self) -> None:
        if self.context not in ("episode", "turn"):
            raise ValueError(f"context must be 'episode' or 'turn', got {self.context!r}")
        if self.group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {self.group_size}")


@dataclass
class TurnRecord:
    """One turn: where its reply sits in a token sequence, and what the env answered."""

    sample: int  # index into TextBatch.samples
    span: tuple[int, int]  # reply tokens [start, end) in that sample
    reward: float
    action_span: tuple[int, int] | None  # characters of the action inside the reply text
    text: str
    invalid: bool
    observation: str  # the text the reply answered (an image observation's text part)
    next_observation: str  # the text the env said next (the final one when the episode ended)
    terminated: bool  # the episode ended here for good (truncation is not termination)


@dataclass
class Episode:
    """One episode's turns, in order."""

    turns: list[int]  # indices into TextBatch.turns
    group: int  # episodes of one group started from the same seed
    terminated: bool
    success: bool
    bootstrap: tuple[int, int] | None  # (sample, token) where V(final state) is read, if truncated

    @property
    def length(self) -> int:
        return len(self.turns)


@dataclass
class TextBatch:
    """Everything one collection produced."""

    samples: list[Conversation] = field(default_factory=list)
    turns: list[TurnRecord] = field(default_factory=list)
    episodes: list[Episode] = field(default_factory=list)
    generated_tokens: int = 0

    def subset(self, episodes: list[int]) -> "TextBatch":
        """The batch of some of its episodes (with their samples and turns, indices renumbered)."""
        out = TextBatch(generated_tokens=0)
        sample_map: dict[int, int] = {}
        for e in episodes:
            episode = self.episodes[e]
            turns = []
            for t in episode.turns:
                turn = self.turns[t]
                if turn.sample not in sample_map:
                    sample_map[turn.sample] = len(out.samples)
                    out.samples.append(self.samples[turn.sample])
                out.turns.append(dataclasses.replace(turn, sample=sample_map[turn.sample]))
                out.generated_tokens += turn.span[1] - turn.span[0]
                turns.append(len(out.turns) - 1)
            bootstrap = episode.bootstrap
            if bootstrap is not None:
                if bootstrap[0] not in sample_map:
                    sample_map[bootstrap[0]] = len(out.samples)
                    out.samples.append(self.samples[bootstrap[0]])
                bootstrap = (sample_map[bootstrap[0]], bootstrap[1])
            out.episodes.append(dataclasses.replace(episode, turns=turns, bootstrap=bootstrap))
        return out

    def extend(self, other: "TextBatch") -> None:
        """Append another collection's episodes; its groups get new ids after this batch's."""
        samples, turns = len(self.samples), len(self.turns)
        groups = 1 + max((ep.group for ep in self.episodes), default=-1)
        self.samples.extend(other.samples)
        self.turns.extend(dataclasses.replace(t, sample=t.sample + samples) for t in other.turns)
        self.episodes.extend(dataclasses.replace(
            ep, turns=[t + turns for t in ep.turns], group=ep.group + groups,
            bootstrap=None if ep.bootstrap is None else (ep.bootstrap[0] + samples, ep.bootstrap[1]))
            for ep in other.episodes)
        self.generated_tokens += other.generated_tokens

    def informative_groups(self, lower: float, upper: float) -> list[int]:
        """Ids of the groups whose success rate lies in ``[lower, upper]`` (SimpleVLA-RL's filter)."""
        by_group: dict[int, list[bool]] = {}
        for ep in self.episodes:
            by_group.setdefault(ep.group, []).append(ep.success)
        return [g for g, successes in by_group.items() if lower <= float(np.mean(successes)) <= upper]

    def episode_returns(self) -> np.ndarray:
        return np.array([sum(self.turns[t].reward for t in ep.turns) for ep in self.episodes])

    def metrics(self) -> dict[str, float]:
        """Success rate, return, length and invalid-action rate of the batch's episodes."""
        return {
            "success_rate": float(np.mean([ep.success for ep in self.episodes])),
            "return_mean": float(self.episode_returns().mean()),
            "episode_turns": float(np.mean([ep.length for ep in self.episodes])),
            "invalid_action_rate": float(np.mean([t.invalid for t in self.turns])),
            "reply_tokens": self.generated_tokens / max(len(self.turns), 1),
        }


@dataclass
class DynamicSampling:
    """SimpleVLA-RL's dynamic sampling (arXiv 2509.09674; ``data.filter_accuracy`` with accuracy
    bounds 0.1 and 0.9 in its LIBERO script; ``verl/trainer/ppo/ray_trainer.py`` ``fit``): GRPO trains
    only on groups whose success rate lies in ``[lower, upper]`` (all-success and all-failure groups
    carry no advantage), and collection goes on until as many groups as one collection holds pass,
    or ``max_rounds`` collections. Surplus groups are dropped, as SimpleVLA-RL drops them (its
    ``add_to_buffer`` keeps the first groups; the hand-off to a buffer is commented out). Short after
    ``max_rounds``: ``when_short="skip"`` trains on nothing, as SimpleVLA-RL drops a batch its epoch's
    prompts could not fill; ``"train"`` (rlft's) trains on the groups it has."""

    enabled: bool = False
    lower: float = 0.1
    upper: float = 0.9
    max_rounds: int = 4
    when_short: str = "train"

    def __post_init__(self) -> None:
        if not 0.0 <= self.lower <= self.upper <= 1.0:
            raise ValueError(f"dynamic sampling needs 0 <= lower <= upper <= 1, got {self.lower}, {self.upper}")
        if self.max_rounds < 1:
            raise ValueError(f"max_rounds must be >= 1, got {self.max_rounds}")
        if self.when_short not in ("train", "skip"):
            raise ValueError(f"dynamic_sampling.when_short must be 'train' or 'skip', got {self.when_short!r}")


def collect_informative(collect: Callable[[int], TextBatch],
                        sampling: DynamicSampling) -> tuple[TextBatch, TextBatch, dict[str, float]]:
    """Collections ``collect(0)``, ``collect(1)``, ... until their informative groups number as many
    as one collection's groups (or ``max_rounds`` collections). Returns everything collected (what
    the sample budget and training metrics count), the episodes of those groups (what GRPO trains
    on; may be empty) and statistics; with sampling off, one collection, trained on whole."""
    first = collect(0)
    if not sampling.enabled:
        return first, first, {}
    wanted = len({ep.group for ep in first.episodes})
    pooled, rounds = first, 1
    while len(pooled.informative_groups(sampling.lower, sampling.upper)) < wanted and rounds < sampling.max_rounds:
        pooled.extend(collect(rounds))
        rounds += 1
    informative = pooled.informative_groups(sampling.lower, sampling.upper)
    short = len(informative) < wanted and sampling.when_short == "skip"
    keep = set() if short else set(informative[:wanted])
    kept = pooled.subset([e for e, ep in enumerate(pooled.episodes) if ep.group in keep])
    return pooled, kept, {"dynamic/rounds": float(rounds), "dynamic/kept_groups": float(len(keep)),
                          "dynamic/collected_episodes": float(len(pooled.episodes))}


def collect_text(policy: LLMPolicy, chat: ChatFormat, vec_env: gym.vector.VectorEnv, waves: int, seed: int,
                 config: TextRolloutConfig | None = None, generator: torch.Generator | None = None,
                 greedy: bool = False) -> TextBatch:
    """Play ``waves * vec_env.num_envs`` episodes; wave ``w`` resets env ``i`` with
    ``seed + w * num_envs + i // group_size`` (so group members share a task instance)."""
    config = config or TextRolloutConfig()
    n = vec_env.num_envs
    if n % config.group_size:
        raise ValueError(f"num_envs {n} is not a multiple of group_size {config.group_size}")
    batch = TextBatch()
    for wave in range(waves):
        seeds = [seed + wave * n + i // config.group_size for i in range(n)]
        _play_wave(policy, chat, vec_env, seeds, config, batch, generator, greedy)
    return batch


def _play_wave(policy: LLMPolicy, chat: ChatFormat, vec_env: gym.vector.VectorEnv, seeds: list[int],
               config: TextRolloutConfig, batch: TextBatch, generator: torch.Generator | None, greedy: bool) -> None:
    n = vec_env.num_envs
    first_group = len(batch.episodes) // config.group_size
    obs, _ = vec_env.reset(seed=seeds)
    last_obs = unbatch_observations(obs)
    current: list[Conversation] = [chat.start(o) for o in last_obs]
    turns: list[list[int]] = [[] for _ in range(n)]
    playing = np.ones(n, dtype=bool)
    sample_of = [-1] * n
    finished: dict[int, Episode] = {}
    while playing.any():
        active = np.flatnonzero(playing).tolist()
        for i in active:
            if sample_of[i] < 0:  # a new sequence: every turn ("turn"), or the episode's first
                batch.samples.append(current[i])
                sample_of[i] = len(batch.samples) - 1
        generated = policy.generate([current[i].tokens for i in active], greedy=greedy, generator=generator,
                                    images=[current[i].image for i in active])
        replies: dict[int, Generation] = dict(zip(active, generated))
        actions = tuple(replies[i].text if playing[i] else "" for i in range(n))
        obs, reward, terminated, truncated, info = vec_env.step(actions)
        final_info = info.get("final_info", {})
        next_batch = unbatch_observations(obs)
        for i in active:
            reply = replies[i]
            conversation = current[i]
            conversation.extend_reply(reply, chat.end_of_turn)
            batch.generated_tokens += len(reply.tokens)
            done = bool(terminated[i] or truncated[i])
            step_info = final_info if done else info
            start, end = int(step_info["action_start"][i]), int(step_info["action_end"][i])
            next_obs = info["final_obs"][i] if done else next_batch[i]
            batch.turns.append(TurnRecord(
                sample=sample_of[i], span=conversation.turns[-1], reward=float(reward[i]),
                action_span=(start, end) if start >= 0 else None, text=reply.text,
                invalid=bool(step_info["invalid_action"][i]), observation=split_observation(last_obs[i])[0],
                next_observation=split_observation(next_obs)[0], terminated=bool(terminated[i]),
            ))
            turns[i].append(len(batch.turns) - 1)
            last_obs[i] = next_obs
            if config.context == "turn":
                current[i], sample_of[i] = chat.start(next_obs), -1
            else:
                chat.extend(conversation, next_obs)
            if done:
                playing[i] = False
                bootstrap = None
                if truncated[i] and not terminated[i]:
                    if config.context == "turn":  # the final state gets a prompt-only sequence
                        batch.samples.append(current[i])
                        sample_of[i] = len(batch.samples) - 1
                    bootstrap = (sample_of[i], len(current[i].tokens) - 1)
                finished[i] = Episode(turns[i], first_group + i // config.group_size, bool(terminated[i]),
                                      bool(step_info["success"][i]), bootstrap)
    batch.episodes.extend(finished[i] for i in range(n))
