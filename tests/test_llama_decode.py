"""rlft's Llama decode step: the same logits and replies as transformers' modules, fresh weights
after every update, and transformers' path wherever it cannot reproduce the model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rlft.policies.llama_decode import LlamaDecoder
from rlft.policies.llm import GenerationConfig, LLMPolicy, LoraSettings, add_lora
from rlft.policies.tiny_lm import build_tiny_lm, build_tiny_vlm

PROMPTS = [[5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 20], [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 30, 31, 32, 33], [40, 41]]


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_lm(tmp_path_factory.mktemp("tiny_lm"), seed=0)


def replies(policy: LLMPolicy, decoder: str, images: list | None = None, tokens: int = 12) -> list:
    policy.generation = GenerationConfig(max_new_tokens=tokens, decoder=decoder)
    prompts = PROMPTS if images is None else [p + [policy.tokenizer.convert_tokens_to_ids("<image>")] * 36
                                              for p in PROMPTS]
    return policy.generate(prompts, generator=torch.Generator().manual_seed(0), images=images)


def assert_same_replies(policy: LLMPolicy, images: list | None = None) -> None:
    policy.eos_id = -1  # full-length replies: every decode step is compared
    ours, theirs = replies(policy, "rlft", images), replies(policy, "transformers", images)
    for a, b in zip(ours, theirs, strict=True):
        assert a.tokens == b.tokens
        np.testing.assert_allclose(a.log_probs, b.log_probs, atol=1e-5)


def test_decode_steps_give_transformers_logits_on_a_left_padded_batch(tiny_lm: Path) -> None:
    """Step by step after a prefill, with left pads and grouped key/value heads (4 query heads, 2 kv)."""
    policy = LLMPolicy.from_pretrained(tiny_lm)
    model = policy.model
    assert model.config.num_attention_heads != model.config.num_key_value_heads
    decoder = LlamaDecoder.build(model)
    assert decoder is not None
    with torch.no_grad():
        logits, cache, attention, position = policy._prefill(PROMPTS, None, model)
        decoder.start(cache, attention, max_new_tokens=6)
        full = [[0] * (attention.shape[1] - len(p)) + p for p in PROMPTS]
        for _ in range(6):
            token = logits.argmax(-1)
            full = [row + [t] for row, t in zip(full, token.tolist())]
            logits = decoder.step(token, position)
            position = position + 1
            ids = torch.tensor(full)
            mask = torch.cat([attention, torch.ones((len(PROMPTS), ids.shape[1] - attention.shape[1]),
                                                    dtype=torch.long)], dim=1)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            reference = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, -1]
            torch.testing.assert_close(logits, reference, atol=1e-5, rtol=1e-5)
        with pytest.raises(RuntimeError, match="made room for no more"):
            decoder.step(token, position)


def test_replies_equal_transformers_for_an_lm_and_a_vlm_with_images(tiny_lm: Path, tmp_path: Path) -> None:
    assert_same_replies(LLMPolicy.from_pretrained(tiny_lm))
    vlm = LLMPolicy.from_pretrained(build_tiny_vlm(tmp_path / "vlm"))
    assert LlamaDecoder.build(vlm.model) is not None  # LLaVA's language model is a Llama
    images = [np.random.default_rng(i).integers(0, 255, (96, 96, 3), dtype=np.uint8) for i in range(len(PROMPTS))]
    assert_same_replies(vlm, images)


def test_the_fused_weights_follow_every_update(tiny_lm: Path) -> None:
    policy = LLMPolicy.from_pretrained(tiny_lm)
    policy.eos_id = -1
    before = replies(policy, "rlft")
    optimizer = torch.optim.SGD(policy.model.parameters(), lr=1.0)
    policy.score(PROMPTS)[0].log_probs.sum().backward()
    optimizer.step()  # in place: the decoder's copies are stale unless rebuilt
    after = replies(policy, "rlft")
    assert [r.log_probs for r in after] != [r.log_probs for r in before]
    assert_same_replies(policy)
    policy.generation = GenerationConfig(dtype="bfloat16")
    assert policy._decoder(policy._sampling_model()) is not None  # the bfloat16 copy decodes the same way


def test_models_it_cannot_reproduce_keep_transformers_path(tiny_lm: Path) -> None:
    lora = LLMPolicy.from_pretrained(tiny_lm)
    lora.model = add_lora(lora.model, LoraSettings(rank=4))
    assert LlamaDecoder.build(lora.model) is None  # its adapters would be dropped
    scaled = LLMPolicy.from_pretrained(tiny_lm)
    scaled.model.config.rope_parameters = {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}
    assert LlamaDecoder.build(scaled.model) is None
    lora.eos_id = -1
    assert [len(r.tokens) for r in replies(lora, "rlft")] == [12] * len(PROMPTS)


def test_an_unknown_decoder_is_named() -> None:
    with pytest.raises(ValueError, match="'fast'"):
        GenerationConfig(decoder="fast")
