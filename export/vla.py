"""A VLA run's policy as a deployment artifact: its saved model and one ONNX graph of a greedy
action decode (prompt token ids and the raw image in, action tokens and the decoded action out).

``export_vla(run_dir, out)`` reads the run's final ``model/`` (``save_pretrained``: weights with
the action tokens, tokenizer, value head), copies it to ``out/model/`` and writes:

- ``policy.onnx``: ``input_ids [B, T] int64`` (one prompt per row, unpadded; ``T`` is dynamic)
  and ``image [B, H, W, 3] uint8`` -> ``action_tokens [B, N] int64`` (indices of ``<act_i>``)
  and ``action``: ``[B, chunk * dims]`` float32 bin centres in the env's bounds, or
  ``[B, chunk]`` int64 discrete actions. The graph resizes and scales the image as the policy does
  (:meth:`LLMPolicy.vision_input`) and decodes the ``N`` reply tokens greedily over the action
  tokens only, recomputing the whole sequence per token (no KV cache: ``N`` is 1 or 2 here);
- ``metadata.json``: the prompt frame (the chat template's text before and after the user content,
  with the system prompt), the image placeholder and the tokenizer file, so that
  ``rlft.deploy.DeployedVLA`` builds the prompt with the ``tokenizers`` package alone; the action
  tokens and their decoding; parity and latency;
- ``golden.npz`` and ``report.md``, as for control policies.

The export is refused unless, over an episode of the task: the runner's prompt ids equal
``ChatFormat.first_prompt``'s, the graph's tokens equal ``LLMPolicy.generate(greedy=True)``'s,
and ONNX Runtime's tokens equal PyTorch's (exactly) with actions within ``TOLERANCE``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rlft.export.onnx_io import (OPSET, TOLERANCE, ExportError, TorchSession, latency, latency_table, provenance,
                                 torch_export)
from rlft.envs.action_tokenizer import ActionTokenizer
from rlft.policies.llm import LLMPolicy

INPUTS, OUTPUTS = ["input_ids", "image"], ["action_tokens", "action"]
RECORDED_STEPS = 30  # policy queries of the recorded episode (at most)


class GreedyActionDecode(nn.Module):
    """Prompt ids and a uint8 image -> the greedy reply's action-token indices and the decoded action."""

    def __init__(self, policy: LLMPolicy, tokens: ActionTokenizer):
        super().__init__()
        self.policy, self.steps, self.discrete = policy, tokens.reply_length, tokens.discrete
        self.chunk, self.vocabulary = tokens.chunk, tokens.vocabulary
        ids = policy.tokenizer.convert_tokens_to_ids(tokens.tokens)  # <act_i> at index i
        self.register_buffer("ids", torch.as_tensor(ids, dtype=torch.long))
        low, high = (np.zeros(1), np.ones(1)) if tokens.discrete else (tokens.low, tokens.high)
        self.register_buffer("low", torch.as_tensor(np.asarray(low, np.float32).reshape(-1)))
        self.register_buffer("high", torch.as_tensor(np.asarray(high, np.float32).reshape(-1)))

    def forward(self, input_ids: torch.Tensor, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = self.policy.vision_input(image)
        chosen = []
        for _ in range(self.steps):
            logits = self.policy.model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                       pixel_values=pixels).logits[:, -1]
            index = logits.index_select(-1, self.ids).argmax(-1)
            chosen.append(index)
            input_ids = torch.cat([input_ids, self.ids[index][:, None]], dim=1)
        indices = torch.stack(chosen, dim=1)
        if self.discrete:
            return indices, indices
        centres = (indices.unflatten(-1, (self.chunk, -1)).float() + 0.5) / self.vocabulary
        return indices, (self.low + centres * (self.high - self.low)).flatten(-2)


def _load(run_dir: Path):
    """The run's env config, action tokenizer, saved policy and chat format."""
    from omegaconf import OmegaConf

    from rlft.runtime.text_train import load_saved_policy, text_env_probe

    cfg = OmegaConf.load(run_dir / "config.yaml")
    env_cfg = OmegaConf.to_container(cfg.text_task.env_cfg, resolve=True)
    _, tokens = text_env_probe(env_cfg)
    if tokens is None:
        raise ExportError(f"{env_cfg['task']} is a text task: its policy exports as the run's save_pretrained "
                          "model/ folder; rlft-export makes ONNX graphs of VLA runs (image and instruction in, "
                          "action out) and of the o2o and finetune pipelines")
    if not (run_dir / "model").is_dir():
        raise ExportError(f"{run_dir} has no model/ folder (a VLA run saves it when it finishes)")
    policy, chat = load_saved_policy(run_dir / "model", env_cfg)
    return env_cfg, tokens, policy.eval(), chat


def describe(policy: LLMPolicy, chat, tokens: ActionTokenizer, image_shape: tuple[int, ...]) -> dict[str, Any]:
    """What ``rlft.deploy.DeployedVLA`` reads."""
    before, after = chat.prompt_frame()
    action: dict[str, Any] = {"name": "action", "tokens": tokens.tokens, "discrete": tokens.discrete,
                              "chunk": tokens.chunk, "reply_length": tokens.reply_length}
    if tokens.discrete:
        action.update(dtype="int64", frame_shape=[])
    else:
        action.update(dtype="float32", frame_shape=[tokens.dims], low=np.asarray(tokens.low).tolist(),
                      high=np.asarray(tokens.high).tolist(), decoding="bin centres: low + (i + 0.5) / bins (high - low)")
    return {
        "format": "onnx", "file": "policy.onnx", "family": "llm/vla", "opset": OPSET,
        "prompt": {"before": before, "after": after, "image_placeholder": policy.image_placeholder or "",
                   "tokenizer": "model/tokenizer.json", "context": "turn"},
        "observation": {"text": "instruction", "image": {"name": "image", "shape": list(image_shape), "dtype": "uint8"}},
        "action": action,
        "control": {"chunk": tokens.chunk, "executed_steps": tokens.chunk, "obs_history": 1},
        "notes": ["the prompt is built outside the graph: before + image_placeholder + instruction + after, "
                  "tokenised by model/tokenizer.json (rlft.deploy.DeployedVLA does it with the tokenizers package)",
                  "model/ is the run's save_pretrained folder (LLMPolicy.from_pretrained loads it for more RL)"],
    }


def export_vla(run_dir: Path, out: Path, seed: int = 0) -> Path:
    """Export a VLA run folder (see the module docstring); returns the output folder."""
    import onnxruntime
    from tokenizers import Tokenizer

    from rlft.deploy.vla import DeployedVLA
    from rlft.envs.factory import make_env

    env_cfg, tokens, policy, chat = _load(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    if (out / "model").exists():
        shutil.rmtree(out / "model")
    shutil.copytree(run_dir / "model", out / "model")
    graph = GreedyActionDecode(policy, tokens).eval()
    env = make_env(env_cfg)
    obs, _ = env.reset(seed=seed)
    metadata = describe(policy, chat, tokens, obs["image"].shape)
    session = TorchSession(graph, INPUTS, OUTPUTS, record=True)
    runner = DeployedVLA.over(metadata, session, Tokenizer.from_file(str(out / "model" / "tokenizer.json")))
    for _ in range(RECORDED_STEPS):
        prompt = runner.prompt_ids(obs["text"])[0].tolist()
        if prompt != chat.first_prompt(obs):
            raise ExportError("the deploy runner's prompt ids differ from ChatFormat.first_prompt's")
        indices, _ = runner.query(obs)
        reply = policy.generate([prompt], greedy=True, images=[obs["image"]])[0].tokens
        if policy.tokenizer.convert_tokens_to_ids([tokens.tokens[i] for i in indices]) != reply:
            raise ExportError("the graph's greedy decode differs from LLMPolicy.generate(greedy=True)")
        obs, _, terminated, truncated, _ = env.step(runner.reply(indices))
        if terminated or truncated:
            break
    path = out / "policy.onnx"
    first = {name: torch.as_tensor(session.feeds[0][name]) for name in INPUTS}
    batch, length = torch.export.Dim("batch", min=1), torch.export.Dim("length", min=2, max=8192)
    torch_export(graph, (first["input_ids"], first["image"]), INPUTS, OUTPUTS, ({0: batch, 1: length}, {0: batch}),
                 path)
    ort = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    expected = [TorchSession(graph, INPUTS, OUTPUTS).run(None, feed) for feed in session.feeds]
    got = [ort.run(None, feed) for feed in session.feeds]
    if any(not np.array_equal(g[0], e[0]) for g, e in zip(got, expected)):
        raise ExportError("ONNX Runtime's greedy action tokens differ from PyTorch's")
    error = max(float(np.abs(g[1].astype(np.float64) - e[1]).max()) for g, e in zip(got, expected))
    if error > TOLERANCE:
        raise ExportError(f"ONNX Runtime's actions differ from PyTorch's by {error:.2e} (> {TOLERANCE})")
    feeds = session.feeds
    np.savez(out / "golden.npz", image=np.concatenate([f["image"] for f in feeds]),
             action_tokens=np.concatenate([e[0] for e in expected]), action=np.concatenate([e[1] for e in expected]),
             **{f"input_ids_{i}": f["input_ids"] for i, f in enumerate(feeds)})
    metadata |= {
        **provenance(run_dir, "model", out),
        "parity": {"max_abs_error": {"recorded": error}, "tokens_equal": True, "recorded_inputs": len(feeds),
                   "random_inputs": 0, "tolerance": TOLERANCE},
        "latency_ms": latency(TorchSession(graph, INPUTS, OUTPUTS), path, feeds[0]),
    }
    (out / "metadata.json").write_text(json.dumps(metadata, indent=2))
    (out / "report.md").write_text("\n".join([
        f"# Export of a VLA ({env_cfg['task']})", "",
        f"Over {len(feeds)} policy queries of an episode: the deploy runner's prompts equal ChatFormat's, the graph's "
        "greedy tokens equal LLMPolicy.generate's, ONNX Runtime's tokens equal PyTorch's and its actions differ by "
        f"{error:.2e} at most (tolerance {TOLERANCE:.0e}).", "", *latency_table(metadata["latency_ms"]), ""]))
    return out
