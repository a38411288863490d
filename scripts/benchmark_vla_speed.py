"""Benchmark: VLA rollout throughput on this CPU -- environment steps and tokens per second of
batched token-action rollouts, for the tiny VLA and for SmolVLM-256M's architecture at its
published size.

* ``tiny``: the VLA every ``vla/*`` experiment builds (a LLaVA of a one-layer CLIP tower on 56x56
  images, 49 image tokens, and a 2-layer 64-wide Llama; ``policies/tiny_lm.py``).
* ``smolvlm-256m``: Idefics3 (SmolVLM's architecture) built from a transformers config with the
  published sizes -- a SigLIP base patch-16/512 tower (768 wide, 12 layers, 12 heads, 93M
  parameters), 64 image tokens per 512x512 image (scale factor 4), and SmolLM2-135M's decoder
  (576 wide, 30 layers, 9 query / 3 key-value heads, vocabulary 49152) -- with random weights (no
  hub access here; the compute is the same). Images are resized from the env's 56x56 to 512x512.

Each measurement plays ``--waves`` waves of ``num_envs`` BabyAI GoToObj episodes (at most
``--turns`` steps each) with one batched ``generate`` per step, one torch thread unless
``--threads``, after one untimed warm-up wave. Writes ``results.md`` / ``results.json`` to ``<out>``.

    python -m rlft.scripts.benchmark_vla_speed --models tiny smolvlm-256m --num-envs 1 4 16
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import torch

from rlft.agents.text_rollout import collect_text
from rlft.envs import make_env, make_vector_env
from rlft.policies.llm import ChatFormat, GenerationConfig, LLMPolicy
from rlft.policies.tiny_lm import TinyLMConfig, build_tiny_vlm, char_tokenizer
from rlft.scripts import bench_runs

TASK = "vla-babyai-gotoobj"
# SmolVLM-256M (HuggingFaceTB/SmolVLM-256M-Instruct, an Idefics3): SigLIP base patch-16/512 and SmolLM2-135M
SMOLVLM_256M = {
    "vision": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
               "image_size": 512, "patch_size": 16},
    "text": {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
             "num_key_value_heads": 3, "vocab_size": 49152, "max_position_embeddings": 8192, "tie_word_embeddings": True},
    "scale_factor": 4,
}


def build_smolvlm_256m(path: Path) -> Path:
    """SmolVLM-256M's architecture with random weights and the character tokenizer (ids < 104 of
    the 49152-row vocabulary), saved for ``from_pretrained``."""
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, LlamaConfig

    tokenizer = char_tokenizer()
    text = LlamaConfig(**SMOLVLM_256M["text"], pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                       bos_token_id=tokenizer.bos_token_id)
    config = Idefics3Config(vision_config=SMOLVLM_256M["vision"], text_config=text.to_dict(),
                            image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                            scale_factor=SMOLVLM_256M["scale_factor"], tie_word_embeddings=True)
    model = Idefics3ForConditionalGeneration(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build(model: str, folder: Path) -> Path:
    if model == "tiny":
        return build_tiny_vlm(folder, TinyLMConfig(), image_size=56, patch_size=8)
    return build_smolvlm_256m(folder)


def measure(policy: LLMPolicy, num_envs: int, waves: int, turns: int) -> dict[str, float]:
    env_cfg = {"task": TASK, "max_episode_steps": turns, "env_kwargs": {"max_turns": turns}}
    probe = make_env(env_cfg).unwrapped
    chat = ChatFormat(policy.tokenizer, probe.system_prompt, policy.image_placeholder)
    vec = make_vector_env(env_cfg, num_envs)
    generator = torch.Generator().manual_seed(0)
    collect_text(policy, chat, vec, 1, seed=10_000, generator=generator)  # warm-up
    started = time.perf_counter()
    batch = collect_text(policy, chat, vec, waves, seed=0, generator=generator)
    seconds = time.perf_counter() - started
    prompt = sum(t.span[0] for t in batch.turns)  # a turn's reply starts after its whole prompt
    return {"num_envs": num_envs, "env_steps": len(batch.turns), "seconds": seconds,
            "env_steps_per_s": len(batch.turns) / seconds, "action_tokens_per_s": batch.generated_tokens / seconds,
            "prompt_tokens_per_s": prompt / seconds, "prompt_tokens": round(prompt / len(batch.turns))}


def main(argv: list[str] | None = None) -> None:
    parser = bench_runs.argument_parser(__doc__, out="benchmarks/vla_speed")
    parser.add_argument("--models", nargs="+", default=["tiny", "smolvlm-256m"], choices=["tiny", "smolvlm-256m"])
    parser.add_argument("--num-envs", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--waves", type=int, default=1)
    parser.add_argument("--turns", type=int, default=5, help="step limit of each episode")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    command = bench_runs.command_line("rlft.scripts.benchmark_vla_speed", argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {"command": command, "threads": args.threads, "models": {}}
    for model in args.models:
        with tempfile.TemporaryDirectory() as tmp:
            policy = LLMPolicy.from_pretrained(build(model, Path(tmp) / model), action_tokens=7,
                                               generation=GenerationConfig(max_new_tokens=1))
        parameters = sum(p.numel() for p in policy.parameters())
        rows = [measure(policy, n, args.waves, args.turns) for n in args.num_envs]
        results["models"][model] = {"parameters": parameters, "rows": rows}
        for row in rows:
            print(f"{model} ({parameters / 1e6:.1f}M) x{row['num_envs']}: {row['env_steps_per_s']:.2f} env steps/s, "
                  f"{row['prompt_tokens_per_s']:.0f} prompt tokens/s", flush=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    lines = ["# VLA rollout throughput", "", f"Command: `{command}` ({args.threads} torch thread(s), 2-core CPU)", "",
             "One batched `generate` per env step (1 action token, BabyAI GoToObj); prompt tokens are the image "
             "tokens, the instruction and the chat template, processed once per step (no cache across steps).", "",
             "| model | parameters | envs | env steps/s | action tokens/s | prompt tokens/s | prompt tokens |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for model, data in results["models"].items():
        lines += [f"| {model} | {data['parameters'] / 1e6:.1f}M | {r['num_envs']} | {r['env_steps_per_s']:.2f} | "
                  f"{r['action_tokens_per_s']:.2f} | {r['prompt_tokens_per_s']:.0f} | {r['prompt_tokens']} |"
                  for r in data["rows"]]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print((out / "results.md").read_text())


if __name__ == "__main__":
    main()
