"""Tiny causal LMs and VLMs built from transformers configs, for tests and CPU experiments.

No pretrained weights can be downloaded here, so tests and the fast benchmarks use a small
Llama-architecture model with a character-level tokenizer and a ChatML chat template, written
to a folder with ``save_pretrained`` and loaded back through the same ``from_pretrained`` path
as any hub model (:meth:`rlft.policies.llm.LLMPolicy.from_pretrained`). The VLM is a LLaVA
(CLIP vision tower, projector, the same tiny Llama) whose ``<image>`` token stands for one
projected image patch; :func:`build_tiny_idefics3` builds SmolVLM's architecture (Idefics3) the same way.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path

import torch

SPECIAL_TOKENS = ("<pad>", "<|im_start|>", "<|im_end|>", "<image>")
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass
class TinyLMConfig:
    """Size of the tiny Llama (defaults: about 0.1M parameters)."""

    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 2048


def char_tokenizer():
    """A character-level fast tokenizer over printable ASCII with ChatML special tokens."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for ch in string.printable:
        vocab.setdefault(ch, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<|im_end|>",
                                        bos_token="<|im_start|>", unk_token="<pad>",
                                        additional_special_tokens=list(SPECIAL_TOKENS[1:]))
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def _llama_config(config: TinyLMConfig, tokenizer):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers, num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads, max_position_embeddings=config.max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id, tie_word_embeddings=True,
    )


def build_tiny_lm(path: str | Path, config: TinyLMConfig | None = None, seed: int = 0) -> Path:
    """Write a randomly initialised tiny Llama and its tokenizer to ``path``; returns ``path``."""
    from transformers import LlamaForCausalLM

    tokenizer = char_tokenizer()
    llama = _llama_config(config or TinyLMConfig(), tokenizer)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(llama)
    return _save(model, tokenizer, path)


def build_tiny_vlm(path: str | Path, config: TinyLMConfig | None = None, seed: int = 0, image_size: int = 96,
                   patch_size: int = 16, vision_width: int = 32) -> Path:
    """Write a randomly initialised tiny LLaVA (one-layer CLIP tower, tiny Llama) to ``path``.

    Images are ``image_size`` square RGB; each of the ``(image_size / patch_size)^2`` patches
    becomes one ``<image>`` token of the prompt.
    """
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration

    if image_size % patch_size:
        raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
    tokenizer = char_tokenizer()
    vision = CLIPVisionConfig(hidden_size=vision_width, intermediate_size=2 * vision_width, num_hidden_layers=1,
                              num_attention_heads=2, image_size=image_size, patch_size=patch_size)
    llava = LlavaConfig(vision_config=vision, text_config=_llama_config(config or TinyLMConfig(), tokenizer),
                        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                        image_seq_length=(image_size // patch_size) ** 2, vision_feature_layer=-1,
                        vision_feature_select_strategy="default", tie_word_embeddings=True)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(llava)
    return _save(model, tokenizer, path)


def build_tiny_idefics3(path: str | Path, config: TinyLMConfig | None = None, seed: int = 0, image_size: int = 64,
                        patch_size: int = 16, vision_width: int = 32, scale_factor: int = 2) -> Path:
    """Write a randomly initialised tiny Idefics3 (SmolVLM's architecture: a SigLIP tower whose
    ``scale_factor^2`` neighbouring patches are merged into one ``<image>`` token) to ``path``."""
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration

    tokenizer = char_tokenizer()
    vision = {"hidden_size": vision_width, "intermediate_size": 2 * vision_width, "num_hidden_layers": 1,
              "num_attention_heads": 2, "image_size": image_size, "patch_size": patch_size}
    idefics = Idefics3Config(vision_config=vision, text_config=_llama_config(config or TinyLMConfig(), tokenizer).to_dict(),
                             image_token_id=tokenizer.convert_tokens_to_ids("<image>"), scale_factor=scale_factor,
                             tie_word_embeddings=True)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Idefics3ForConditionalGeneration(idefics)
    return _save(model, tokenizer, path)


def _save(model, tokenizer, path: str | Path) -> Path:
    path = Path(path)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
