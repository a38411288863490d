"""Benchmark: tokens/s of batched sampling with log-probs (``LLMPolicy.generate``) against plain
``transformers`` ``generate``, float32 and bfloat16, at several batch sizes.

The prompts are NumberLine's first prompts from different reset seeds (one per row: the same
system prompt and chat template, different states, as rollouts see them). Every reply runs the
full ``--new-tokens`` (end-of-sequence disabled). The arms of one batch size run in rotation,
``--repeats`` times, and the best time of each counts, so all arms see the same machine.

* ``transformers generate``: ``model.generate(do_sample=True, top_k=0, temperature=1)`` on the
  left-padded batch; it returns tokens only.
* ``rlft generate``: ``LLMPolicy.generate``, which also records each token's log-probability,
  computes the prompts' shared prefix once, and decodes with ``rlft.policies.llama_decode``
  (fused products, a preallocated cache; ``generation.decoder=rlft``, the default).
* ``rlft, transformers decode``: the same with transformers' modules for the decode steps
  (``generation.decoder=transformers``): the before of the decoder.
* ``bfloat16``: the same with a bfloat16 copy of the weights (``generation.dtype=bfloat16`` for
  rlft; ``model.to(torch.bfloat16)`` for transformers). This CPU has AMX-BF16.

    python -m rlft.scripts.benchmark_generation --model smollm2 tiny --batches 1 16 64 --threads 2

``smollm2`` needs ``make smollm2``. Writes ``<out>/results.md`` and ``results.json``.
"""

from __future__ import annotations

import copy
import json
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

from rlft.common.machine import cpu_description
from rlft.envs import make_env
from rlft.policies.llm import ChatFormat, GenerationConfig, LLMPolicy
from rlft.policies.tiny_lm import build_tiny_lm
from rlft.scripts import bench_runs
from rlft.scripts.benchmark_smollm2 import GGUF_FILE, smollm2_dir

ARMS = ("transformers generate, float32", "rlft, transformers decode, float32", "rlft generate, float32",
        "transformers generate, bfloat16", "rlft, transformers decode, bfloat16", "rlft generate, bfloat16")
SPEED_UPS = ("rlft, transformers decode, float32", "rlft generate, float32",
             "rlft, transformers decode, bfloat16", "rlft generate, bfloat16")


def load_policy(name: str, folder: Path) -> LLMPolicy:
    if name == "smollm2":
        return LLMPolicy.from_pretrained(smollm2_dir(), gguf_file=GGUF_FILE)
    return LLMPolicy.from_pretrained(build_tiny_lm(folder / "tiny", seed=0))


def prompts_for(policy: LLMPolicy, batch: int, task: str = "numberline") -> list[list[int]]:
    env = make_env({"task": task}).unwrapped
    chat = ChatFormat(policy.tokenizer, env.system_prompt)
    return [chat.first_prompt(env.reset(seed=seed)[0]) for seed in range(batch)]


def plain_generate(model: torch.nn.Module, policy: LLMPolicy, prompts: list[list[int]], new_tokens: int
                   ) -> Callable[[], int]:
    """transformers' sampling loop on the left-padded prompts; returns the tokens it wrote."""
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[policy.pad_id] * (width - len(p)) + list(p) for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])

    def run() -> int:
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, top_k=0, top_p=1.0,
                             temperature=1.0, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                             pad_token_id=policy.pad_id)
        return int((out.shape[1] - width) * out.shape[0])

    return run


def rlft_generate(policy: LLMPolicy, prompts: list[list[int]], new_tokens: int, dtype: str, decoder: str
                  ) -> Callable[[], int]:
    def run() -> int:
        policy.generation = GenerationConfig(max_new_tokens=new_tokens, dtype=dtype, decoder=decoder)
        replies = policy.generate(prompts, generator=torch.Generator().manual_seed(0))
        return sum(len(r.tokens) for r in replies)

    return run


def best_rates(arms: dict[str, Callable[[], int]], repeats: int) -> dict[str, float]:
    """Tokens/s of each arm: the best of ``repeats`` timed calls, arms in rotation, after one warm-up each."""
    for run in arms.values():
        run()
    best = {name: 0.0 for name in arms}
    for _ in range(repeats):
        for name, run in arms.items():
            start = time.perf_counter()
            tokens = run()
            best[name] = max(best[name], tokens / (time.perf_counter() - start))
    return best


def print_profile(label: str, run: Callable[[], int]) -> None:
    """Where one call of ``run`` spends its time: torch.profiler's operations by self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    run()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        tokens = run()
    print(f"{label}: {tokens} tokens", prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12), sep="\n")


def main(argv: list[str] | None = None) -> None:
    parser = bench_runs.argument_parser(__doc__, out="benchmarks/generation")
    parser.add_argument("--model", nargs="+", default=["smollm2", "tiny"], choices=["smollm2", "tiny"])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--profile", action="store_true",
                        help="instead of timing: print torch.profiler's top operations of one float32 rlft generate per batch")
    args = parser.parse_args(argv)
    command = bench_runs.command_line("rlft.scripts.benchmark_generation", argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {"command": command, "rates": {}}
    with tempfile.TemporaryDirectory() as folder:
        for name in args.model:
            policy = load_policy(name, Path(folder))
            policy.eos_id = -1  # full-length replies
            low = None if args.profile else copy.deepcopy(policy.model).to(torch.bfloat16)  # plain bfloat16 generate
            for batch in args.batches:
                prompts = prompts_for(policy, batch)
                if args.profile:
                    print_profile(f"{name} batch {batch}", rlft_generate(policy, prompts, args.new_tokens, "float32", "rlft"))
                    continue
                arms = {ARMS[0]: plain_generate(policy.model, policy, prompts, args.new_tokens),
                        ARMS[1]: rlft_generate(policy, prompts, args.new_tokens, "float32", "transformers"),
                        ARMS[2]: rlft_generate(policy, prompts, args.new_tokens, "float32", "rlft"),
                        ARMS[3]: plain_generate(low, policy, prompts, args.new_tokens),
                        ARMS[4]: rlft_generate(policy, prompts, args.new_tokens, "bfloat16", "transformers"),
                        ARMS[5]: rlft_generate(policy, prompts, args.new_tokens, "bfloat16", "rlft")}
                results["rates"][f"{name} batch {batch}"] = rates = best_rates(arms, args.repeats)
                print(name, batch, {k: round(v, 1) for k, v in rates.items()}, flush=True)
    if args.profile:
        return  # nothing timed: the results files stay as they are
    (out / "results.json").write_text(json.dumps(results, indent=2))
    lines = ["# Batched sampling: tokens/s against plain transformers generate", "",
             f"Command: `{command}`", "",
             f"{cpu_description()}, torch {torch.__version__}, {args.threads} torch threads, "
             f"{args.new_tokens} new tokens per row, NumberLine prompts (one reset seed per row), best of "
             f"{args.repeats} rotations. Speed-up: tokens/s over plain float32 `generate`.", "",
             "| model, batch | " + " | ".join(ARMS) + " | " + " | ".join(f"speed-up: {a}" for a in SPEED_UPS) + " |",
             "| --- |" + " ---: |" * (len(ARMS) + len(SPEED_UPS))]
    for key, rates in results["rates"].items():
        base = rates[ARMS[0]]
        lines.append(f"| {key} | " + " | ".join(f"{rates[a]:.1f}" for a in ARMS) + " | "
                     + " | ".join(f"{rates[a] / base:.2f}x" for a in SPEED_UPS) + " |")
    (out / "results.md").write_text("\n".join(lines + [""]))
    print((out / "results.md").read_text())


if __name__ == "__main__":
    main()
