"""Decode steps of Llama-architecture language models without transformers' per-layer modules.

A sampling loop runs one token per row through the model per step. With transformers' modules a
SmolLM2-135M step at batch 16 is 30 layers x ~40 small operations, a 4-D mask rebuilt from the
2-D attention mask, and a key/value cache grown by concatenation; on a CPU the matrix products
of q/k/v (576 -> 576/192/192 columns) and of the gated MLP run far from the rate of one larger
product. :class:`LlamaDecoder` takes the weights of a Llama model (``LlamaForCausalLM``, or the
Llama language model of a VLM such as LLaVA or SmolVLM's Idefics3) and runs the same arithmetic:

* q, k and v in one product (their weights concatenated), gate and up in one;
* float32 products computed as ``weight @ x.T`` (transposed back as a view): CPU BLAS picks faster
  kernels with the large operand on the left at decode shapes (a few rows against thousands);
* the key/value cache preallocated for the whole reply (prompt + ``max_new_tokens``), written in
  place; the prompt's cache comes from the transformers prefill, so images and the shared-prefix
  prefill stay as they are;
* attention of the one new query as two small products over the cache (query heads grouped
  by their key/value head, no repeated keys), masked by one additive bias per row (its left pads).

Float32 logits match transformers' to float rounding (``tests/test_llama_decode.py``). Models
it cannot reproduce (another architecture, rotary scaling, biases, LoRA adapters that are not
merged) report ``None`` from :meth:`LlamaDecoder.build`, and generation keeps the transformers path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")


@dataclass
class _Layer:
    norm_attn: torch.Tensor
    qkv: torch.Tensor  # [(H + 2 KVH) * d, hidden]
    out: torch.Tensor
    norm_mlp: torch.Tensor
    gate_up: torch.Tensor  # [2 * intermediate, hidden]
    down: torch.Tensor


def _language_model(model: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """``(Llama decoder stack, output projection)`` of ``model``, or ``None`` when it has none."""
    from transformers.models.llama.modeling_llama import LlamaModel

    get_decoder = getattr(model, "get_decoder", None)
    head = getattr(model, "get_output_embeddings", lambda: None)()
    decoder = get_decoder() if callable(get_decoder) else None
    if not isinstance(decoder, LlamaModel) or type(head) is not nn.Linear or head.bias is not None:
        return None
    projections = [getattr(block, name) for layer in decoder.layers
                   for block, names in ((layer.self_attn, ATTENTION_PROJECTIONS), (layer.mlp, MLP_PROJECTIONS))
                   for name in names]
    if any(type(m) is not nn.Linear for m in projections):  # e.g. LoRA layers, whose adapters it would drop
        return None
    return decoder, head


def _reproducible(config: object) -> bool:
    """Whether the decoder's arithmetic is this config's: default rotary, SiLU, no biases."""
    rope = getattr(config, "rope_parameters", None) or {}
    return (rope.get("rope_type", "default") == "default" and config.hidden_act == "silu"
            and not getattr(config, "attention_bias", False) and not getattr(config, "mlp_bias", False)
            and getattr(config, "pretraining_tp", 1) == 1)


class LlamaDecoder:
    """The decode step of one Llama model's current weights (fused copies, refreshed by the caller).

    Usage: ``decoder.start(cache, attention, max_new_tokens)`` after a transformers prefill, then
    ``decoder.step(tokens, positions)`` once per new token: logits ``[B, V]`` of the next token.
    """

    def __init__(self, decoder: nn.Module, head: nn.Module):
        config = decoder.config
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.eps = config.rms_norm_eps
        self.embed = decoder.embed_tokens.weight
        self.final_norm = decoder.norm.weight
        self.head = head.weight
        self.inv_freq = decoder.rotary_emb.inv_freq
        self.attention_scaling = decoder.rotary_emb.attention_scaling
        with torch.no_grad():
            self.layers = [
                _Layer(layer.input_layernorm.weight,
                       torch.cat([layer.self_attn.q_proj.weight, layer.self_attn.k_proj.weight,
                                  layer.self_attn.v_proj.weight]),
                       layer.self_attn.o_proj.weight, layer.post_attention_layernorm.weight,
                       torch.cat([layer.mlp.gate_proj.weight, layer.mlp.up_proj.weight]), layer.mlp.down_proj.weight)
                for layer in decoder.layers
            ]
        self._cache: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._bias = torch.empty(0)
        self._length = 0

    @classmethod
    def build(cls, model: nn.Module) -> "LlamaDecoder | None":
        """A decoder for ``model``'s weights, or ``None`` when this module cannot reproduce it."""
        parts = _language_model(model)
        if parts is None or not _reproducible(parts[0].config):
            return None
        return cls(*parts)

    def start(self, cache: object, attention: torch.Tensor, max_new_tokens: int) -> None:
        """Take the prompt's transformers cache (``DynamicCache``: keys/values ``[B, KVH, T, d]``
        per layer) and its attention mask ``[B, T]`` (0 at left pads) into preallocated buffers
        with room for ``max_new_tokens`` more positions."""
        batch, length = attention.shape
        capacity = length + max_new_tokens
        self._cache = []
        for layer in cache.layers:
            keys, values = layer.keys, layer.values
            k = keys.new_empty(batch, self.kv_heads, capacity, self.head_dim)
            v = values.new_empty(batch, self.kv_heads, capacity, self.head_dim)
            k[:, :, :length], v[:, :, :length] = keys, values
            self._cache.append((k, v))
        visible = torch.ones((batch, capacity), dtype=torch.bool, device=attention.device)
        visible[:, :length] = attention.bool()
        bias = torch.zeros((batch, capacity), dtype=self.embed.dtype, device=attention.device)
        self._bias = bias.masked_fill(~visible, float("-inf"))[:, None, None, :]  # [B, 1, 1, capacity]
        self._length = length

    def _rms_norm(self, hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Llama's RMSNorm: normalised in float32, scaled in the model's dtype."""
        x = hidden.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return weight * x.to(hidden.dtype)

    def _rotary(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin ``[B, 1, 1, d]`` (broadcast over heads) at ``positions [B]``, as transformers' rotary embedding computes them."""
        freqs = positions[:, None].float() * self.inv_freq.to(positions.device)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos() * self.attention_scaling, emb.sin() * self.attention_scaling
        return cos.to(dtype)[:, None, None, :], sin.to(dtype)[:, None, None, :]

    @staticmethod
    def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin

    @staticmethod
    def _linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """``x [B, in]`` times ``weight [out, in]`` transposed. In float32 computed as
        ``(weight @ x.T).T`` (a transposed view), which CPU BLAS runs faster than ``F.linear`` at
        decode shapes; other dtypes keep ``F.linear`` (bfloat16 lost with the transposed form on a CPU
        without bfloat16 instructions). The whole generate: ``benchmarks/generation/README.md``."""
        if weight.dtype == torch.float32:
            return (weight @ x.t()).t()
        return F.linear(x, weight)

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, V]`` after ``tokens [B]`` at ``positions [B]``; their keys and values join the cache."""
        if self._length >= self._bias.shape[-1]:
            raise RuntimeError(f"LlamaDecoder: the cache holds {self._length} positions, start() made room for no more")
        batch, slot, groups = tokens.shape[0], self._length, self.heads // self.kv_heads
        hidden = F.embedding(tokens, self.embed)  # [B, hidden]
        cos, sin = self._rotary(positions, hidden.dtype)
        q_width, kv_width = self.heads * self.head_dim, self.kv_heads * self.head_dim
        bias = self._bias[..., : slot + 1]
        for layer, (k_cache, v_cache) in zip(self.layers, self._cache, strict=True):
            qkv = self._linear(self._rms_norm(hidden, layer.norm_attn), layer.qkv)  # [B, (H + 2 KVH) d]
            # a query head's group shares one key/value head: q as [B, KVH, groups, d]
            q = self._rotate(qkv[:, :q_width].reshape(batch, self.kv_heads, groups, self.head_dim), cos, sin)
            k = qkv[:, q_width:q_width + kv_width].reshape(batch, self.kv_heads, 1, self.head_dim)
            k_cache[:, :, slot: slot + 1] = self._rotate(k, cos, sin)
            v_cache[:, :, slot: slot + 1] = qkv[:, q_width + kv_width:].reshape(batch, self.kv_heads, 1, self.head_dim)
            # eager attention of one query position: scores in the model's dtype, softmax in float32
            scores = torch.matmul(q, k_cache[:, :, : slot + 1].transpose(2, 3)) * self.head_dim ** -0.5 + bias
            weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
            attended = torch.matmul(weights, v_cache[:, :, : slot + 1]).reshape(batch, q_width)
            hidden = hidden + self._linear(attended, layer.out)
            gate, up = self._linear(self._rms_norm(hidden, layer.norm_mlp), layer.gate_up).chunk(2, dim=-1)
            hidden = hidden + self._linear(F.silu(gate) * up, layer.down)
        self._length += 1
        return self._linear(self._rms_norm(hidden, self.final_norm), self.head).contiguous()
