"""A language-model policy around any Hugging Face causal LM.

- Loads with ``from_pretrained`` (a folder or hub id; ``gguf_file=`` for GGUF checkpoints, which
  transformers de-quantises into a trainable float model), optionally adds LoRA adapters (peft)
  and a value head. Hub ids come from the local Hugging Face cache unless downloads are asked for;
  weights only from safetensors (or GGUF), never from a pickle, each file's header checked first
  (:mod:`rlft.policies.model_files`).
- Samples a batch of replies with a KV cache and records the log-probability of every sampled
  token *at generation time*, under the sampling distribution ``softmax(logits / temperature)``.
  Training recomputes the same quantity with :meth:`LLMPolicy.token_log_probs`; the two agree
  to float rounding (tested). Top-k/top-p truncation is deliberately absent: it would make the
  sampling distribution differ from the one the policy gradient differentiates.
- Builds multi-turn token sequences *token-exactly* (:class:`Conversation`): sampled tokens are
  appended as sampled, never re-tokenised from text, and the chat template's tokens between
  turns come from the tokenizer's own template. ``model_mask`` marks the model's tokens, the only
  ones any loss touches.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rlft.envs.action_tokenizer import add_action_tokens
from rlft.policies.llama_decode import LlamaDecoder
from rlft.policies.model_files import UnsafeModelFileError, check_model_folder, check_safetensors, resolve_model


SAMPLING_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
DECODERS = ("rlft", "transformers")  # GenerationConfig.decoder
# Prefill computes logits at the last position only. Given as an index tensor, not ``logits_to_keep=1``:
# the int form hands the LM head a strided view, for which CPU bfloat16 matmul copies the head's weight
# once per row (seconds per SmolLM2 batch-16 prefill); an index gathers a contiguous [B, 1, H] first.
LAST_POSITION = torch.tensor([-1])


@dataclass
class GenerationConfig:
    """Sampling settings; ``temperature`` also defines the policy's log-probabilities."""

    max_new_tokens: int = 32
    temperature: float = 1.0
    # precision of the copy of the model that samples rollouts: "bfloat16" halves the weight bytes
    # each decode step streams (AMX / tensor cores); training, scoring and values stay float32, and
    # learners recompute the old log-probs in float32 (LLMPolicy.samples_exact_log_probs)
    dtype: str = "float32"
    # the decode steps after the prompt: "rlft" runs rlft.policies.llama_decode.LlamaDecoder (fused
    # products, a preallocated cache) on Llama-architecture models and transformers' modules on any
    # other; "transformers" always runs transformers' modules
    decoder: str = "rlft"

    def __post_init__(self) -> None:
        if self.dtype not in SAMPLING_DTYPES:
            raise ValueError(f"generation dtype must be one of {sorted(SAMPLING_DTYPES)}, got {self.dtype!r}")
        if self.decoder not in DECODERS:
            raise ValueError(f"generation decoder must be one of {list(DECODERS)}, got {self.decoder!r}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive (use greedy=True for argmax), got {self.temperature}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


@dataclass
class LoraSettings:
    """LoRA adapters (Hu et al. 2021) on every linear layer of the LM; peft does the work."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"


@dataclass
class Generation:
    """One sampled reply."""

    tokens: list[int]
    log_probs: list[float]
    text: str
    finished: bool  # ended with the end-of-turn token (else cut at max_new_tokens)


@dataclass
class Conversation:
    """One token sequence spanning one or more turns.

    ``model_mask[i]`` is True for tokens the model sampled; ``turns`` holds each reply's
    ``(start, end)`` token span; the token before ``start`` is the last prompt token, where the
    value head reads the state.
    """

    tokens: list[int] = field(default_factory=list)
    model_mask: list[bool] = field(default_factory=list)
    sampled_log_probs: list[float] = field(default_factory=list)
    turns: list[tuple[int, int]] = field(default_factory=list)
    image: np.ndarray | None = None  # the [H, W, 3] uint8 image of a VLM prompt (one per sequence)

    def extend_prompt(self, tokens: Sequence[int]) -> None:
        self.tokens.extend(tokens)
        self.model_mask.extend([False] * len(tokens))
        self.sampled_log_probs.extend([0.0] * len(tokens))

    def state(self) -> dict:
        """Plain lists and tensors (checkpoints load with ``weights_only``)."""
        image = None if self.image is None else torch.from_numpy(self.image.copy())
        return {"tokens": list(self.tokens), "model_mask": list(self.model_mask),
                "sampled_log_probs": list(self.sampled_log_probs), "turns": [list(t) for t in self.turns],
                "image": image}

    @classmethod
    def from_state(cls, state: dict) -> "Conversation":
        image = None if state["image"] is None else state["image"].numpy()
        return cls(list(state["tokens"]), list(state["model_mask"]), list(state["sampled_log_probs"]),
                   [tuple(t) for t in state["turns"]], image)

    def extend_reply(self, generation: Generation, end_of_turn: int) -> None:
        start = len(self.tokens)
        self.tokens.extend(generation.tokens)
        self.model_mask.extend([True] * len(generation.tokens))
        self.sampled_log_probs.extend(generation.log_probs)
        self.turns.append((start, len(self.tokens)))
        if not generation.finished:  # close the turn as the template would; not a model token
            self.extend_prompt([end_of_turn])


Observation = str | Mapping[str, Any]  # text, or {"text": str, "image": uint8 [H, W, 3]} for VLM tasks


def split_observation(observation: Observation) -> tuple[str, np.ndarray | None]:
    """``(text, image or None)`` of a text or text-and-image observation."""
    if isinstance(observation, str):
        return observation, None
    if "text" not in observation:
        raise KeyError(f"an image observation needs 'text' and 'image' keys, got {sorted(observation)}")
    return str(observation["text"]), observation.get("image")


PROMPT_CACHE_SIZE = 65536


class ChatFormat:
    """Token-exact chat formatting from a tokenizer's own chat template.

    ``image_placeholder`` (a VLM's image tokens, :attr:`LLMPolicy.image_placeholder`) is put in
    front of the text of observations that carry an image.
    """

    def __init__(self, tokenizer: Any, system_prompt: str = "", image_placeholder: str | None = None):
        self.image_placeholder = image_placeholder
        if tokenizer.chat_template is None:
            raise ValueError("the tokenizer has no chat template; set tokenizer.chat_template first")
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no eos token to end a turn")
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        self.end_of_turn = int(tokenizer.eos_token_id)
        self._between_turns = self._between_turns_text()
        self._prompts: dict[str, list[int]] = {}

    def _messages(self, *turns: dict[str, str]) -> list[dict[str, str]]:
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return system + list(turns)

    def _render(self, messages: list[dict[str, str]], generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)

    def _between_turns_text(self) -> tuple[str, str]:
        """Text the template puts after a reply's end-of-turn token and around the next user message."""
        marker = "\x00USER\x00"
        done = self._messages({"role": "user", "content": "u"}, {"role": "assistant", "content": "a"})
        before = self._render(done, False)
        after = self._render(done + [{"role": "user", "content": marker}], True)
        eos = self.tokenizer.eos_token
        end = before.rfind("a" + eos)
        if end < 0 or not after.startswith(before):
            raise ValueError("the chat template does not close replies with the eos token and extend "
                             "conversations by appending; token-exact multi-turn formatting needs both")
        tail = before[end + len("a" + eos):] + after[len(before):]
        head, _, rest = tail.partition(marker)
        return head, rest

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _content(self, observation: Observation) -> str:
        text, image = split_observation(observation)
        if image is None:
            return text
        if not self.image_placeholder:
            raise ValueError("an image observation needs a vision-language model (this policy has no image tokens)")
        return self.image_placeholder + text

    def prompt_frame(self) -> tuple[str, str]:
        """The text of a first prompt before and after its user content (the system prompt, the
        template's markup, the generation prompt): ``first_prompt`` encodes ``before + content + after``."""
        marker = "\x00CONTENT\x00"
        text = self._render(self._messages({"role": "user", "content": marker}), True)
        if text.count(marker) != 1:
            raise ValueError("the chat template does not put the user content into the prompt verbatim")
        before, _, after = text.partition(marker)
        return before, after

    def first_prompt(self, observation: Observation) -> list[int]:
        """Tokens of the system prompt, the first user message and the generation prompt.

        Text observations' prompts are remembered (:data:`PROMPT_CACHE_SIZE` of them): rendering the
        chat template costs more than a tiny model's forward pass, and text tasks repeat observations.
        """
        if not isinstance(observation, str):
            return self._first_prompt(observation)
        tokens = self._prompts.get(observation)
        if tokens is None:
            tokens = self._first_prompt(observation)
            if len(self._prompts) >= PROMPT_CACHE_SIZE:
                self._prompts.clear()
            self._prompts[observation] = tokens
        return list(tokens)

    def _first_prompt(self, observation: Observation) -> list[int]:
        return self.encode(self._render(self._messages({"role": "user", "content": self._content(observation)}), True))

    def next_prompt(self, observation: Observation) -> list[int]:
        """Tokens that follow a closed reply: the next user message and the generation prompt."""
        head, tail = self._between_turns
        return self.encode(head + self._content(observation) + tail)

    def start(self, observation: Observation) -> Conversation:
        """A new sequence prompted with ``observation`` (and carrying its image, if any)."""
        conversation = Conversation(image=split_observation(observation)[1])
        conversation.extend_prompt(self.first_prompt(observation))
        return conversation

    def extend(self, conversation: Conversation, observation: Observation) -> None:
        """Append the next observation to a dialogue; one image per sequence."""
        if split_observation(observation)[1] is not None:
            raise ValueError("image observations start a new sequence each turn: use context='turn'")
        conversation.extend_prompt(self.next_prompt(observation))


class ValueHead(nn.Module):
    """Scalar value from the LM's last hidden state at the last prompt token: a linear layer, or an
    MLP of ``hidden`` widths, either

    - ``activation="gelu"``: RL4VLA's (4096 -> 512 -> 128 -> 1, gen-robot/RL4VLA
      ``modeling_prismatic.py`` ``ValueHead``): GELUs, a last layer without bias, weights of std 0.02;
    - ``activation="relu"``: RL4VLM's (4096 -> 1024 -> 512 -> 1, RL4VLM/RL4VLM
      ``VLM_PPO/a2c_ppo_acktr/model.py``): ReLUs, every layer with its bias and torch's default init.

    The linear head (no ``hidden``) has weights of std ``1 / sqrt(hidden_size)`` and a zero bias."""

    def __init__(self, hidden_size: int, hidden: Sequence[int] = (), activation: str = "gelu"):
        super().__init__()
        if activation not in ("gelu", "relu"):
            raise ValueError(f"value head activation must be 'gelu' or 'relu', got {activation!r}")
        layers: list[nn.Module] = []
        width = hidden_size
        for size in hidden:
            layers += [nn.Linear(width, size), nn.GELU() if activation == "gelu" else nn.ReLU()]
            width = size
        self.hidden = nn.Sequential(*layers)
        rl4vla = bool(hidden) and activation == "gelu"
        self.linear = nn.Linear(width, 1, bias=not rl4vla)
        if rl4vla:
            nn.init.normal_(self.linear.weight, std=0.02)
        elif not hidden:
            nn.init.normal_(self.linear.weight, std=1.0 / math.sqrt(hidden_size))
            nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(self.hidden(hidden.float())).squeeze(-1)


@dataclass
class SequenceScores:
    """What one training forward pass over padded sequences gives."""

    log_probs: torch.Tensor  # [B, L]: log p(token t | tokens < t); 0 at t = 0 and on padding
    entropy: torch.Tensor  # [B, L] entropy of the distribution that produced token t
    hidden: torch.Tensor  # [B, L, H] last hidden states (state at t is read at t)


class LLMPolicy(nn.Module):
    """A causal LM that samples replies with log-probs, scores sequences, and (optionally) values states."""

    def __init__(self, model: nn.Module, tokenizer: Any, generation: GenerationConfig | None = None,
                 value_head: bool = False, value_hidden: Sequence[int] = (), value_activation: str = "gelu"):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.generation = generation or GenerationConfig()
        hidden = model.config.get_text_config().hidden_size
        self.value_head = ValueHead(hidden, value_hidden, value_activation) if value_head else None
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.pad_id = int(tokenizer.pad_token_id)
        self.eos_id = int(tokenizer.eos_token_id)
        # a VLM never writes its image placeholder token: it is outside the policy's support
        image_token = getattr(model.config, "image_token_id", None)
        self._unsampleable = [int(image_token)] if image_token is not None else []
        self._allowed: torch.Tensor | None = None  # the only ids the policy may write (restrict_tokens)
        self._sampler: tuple[nn.Module, nn.Module, int] | None = None  # (source model, low-precision copy, version)
        self._fused: tuple[nn.Module, int, LlamaDecoder | None] | None = None  # (sampling model, version, decoder)

    def restrict_tokens(self, token_ids: Sequence[int]) -> None:
        """Constrain the policy to ``token_ids`` (a VLA's action tokens): every other token gets
        probability 0, in sampling and in every recomputed log-probability alike, so replies never
        end with the end-of-turn token and run exactly ``max_new_tokens``."""
        ids = sorted({int(i) for i in token_ids})
        if not ids:
            raise ValueError("restrict_tokens needs at least one token id")
        vocabulary = self.model.get_output_embeddings().weight.shape[0]
        if ids[0] < 0 or ids[-1] >= vocabulary:
            raise ValueError(f"token ids {ids[0]}..{ids[-1]} outside the vocabulary of {vocabulary}")
        self._allowed = torch.as_tensor(ids, dtype=torch.long)

    @property
    def allowed_tokens(self) -> list[int] | None:
        """The ids decoding is restricted to (:meth:`restrict_tokens`), or ``None``."""
        return None if self._allowed is None else self._allowed.tolist()

    @property
    def ends_turns(self) -> bool:
        """Whether the policy writes its end-of-turn token (not when restricted to action tokens)."""
        return self._allowed is None or self.eos_id in self._allowed.tolist()

    def _log_softmax(self, logits: torch.Tensor, temperature: float | None = None) -> torch.Tensor:
        """The policy's token distribution: ``log softmax(logits / T)`` over the tokens it may write
        (``temperature``: another T than the policy's, for evaluation)."""
        logits = logits.float() / (temperature or self.generation.temperature)
        if self._allowed is not None:
            allowed = self._allowed.to(logits.device)
            restricted = torch.full_like(logits, float("-inf"))
            restricted[..., allowed] = logits[..., allowed]
            logits = restricted
        elif self._unsampleable:
            logits = logits.clone()
            logits[..., self._unsampleable] = float("-inf")
        return F.log_softmax(logits, dim=-1)

    # --- loading --------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | Path, gguf_file: str | None = None, lora: LoraSettings | None = None,
                        value_head: bool = False, generation: GenerationConfig | None = None,
                        dtype: torch.dtype = torch.float32, action_tokens: int = 0,
                        value_hidden: Sequence[int] = (), value_activation: str = "gelu",
                        download: bool = False) -> "LLMPolicy":
        """Load a causal LM and its tokenizer (``gguf_file``: a GGUF file inside ``path``).

        ``path`` is a local folder, or a hub id found in the local Hugging Face cache; ``download``
        lets the hub be asked for a hub id missing there. Either way transformers is only handed the
        local folder, after :func:`~rlft.policies.model_files.check_model_folder` (no pickles, every
        header checked), with no network and no remote code.

        ``action_tokens > 0`` makes a token-action VLA: ``<act_0>`` .. ``<act_{n-1}>`` are added
        to the vocabulary where missing (before LoRA, so their rows exist in the base model) and
        decoding is restricted to them (:mod:`rlft.envs.action_tokenizer`)."""
        from safetensors.torch import load_file
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer

        folder = resolve_model(str(path), gguf_file, download)
        check_model_folder(folder, gguf_file)
        head = _value_head_file(folder) if value_head else None
        # no network; and a config.json asking for remote code is refused, not a prompt whose "y" runs it
        hub: dict[str, Any] = {"local_files_only": True, "trust_remote_code": False}
        source = {"gguf_file": gguf_file} if gguf_file else {}
        tokenizer = AutoTokenizer.from_pretrained(folder, **hub, **source)
        vision = hasattr(AutoConfig.from_pretrained(folder, **hub, **source), "vision_config")
        auto = AutoModelForImageTextToText if vision else AutoModelForCausalLM
        # use_safetensors: never fall back to a pickle beside them (check_model_folder found them)
        model = auto.from_pretrained(folder, dtype=dtype, **hub, **(source or {"use_safetensors": True}))
        action_ids = add_action_tokens(tokenizer, model, action_tokens) if action_tokens else None
        if lora is not None:
            model = add_lora(model, lora)
        policy = cls(model, tokenizer, generation, value_head, value_hidden, value_activation)
        if action_ids is not None:
            policy.restrict_tokens(action_ids)
        if head is not None:
            policy.value_head.load_state_dict(load_file(head))
        return policy

    def save_pretrained(self, path: str | Path) -> None:
        """Write the model (merged LoRA weights too), tokenizer and value head to ``path``, all as safetensors."""
        from safetensors.torch import save_file

        path = Path(path)
        is_peft = hasattr(self.model, "merge_and_unload")
        model = copy.deepcopy(self.model).merge_and_unload() if is_peft else self.model  # keep adapters live
        if getattr(model, "hf_quantizer", None) is not None:  # GGUF checkpoints load de-quantised: plain floats
            model = model if is_peft else copy.deepcopy(model)
            model.hf_quantizer = None
            model.config.__dict__.pop("quantization_config", None)
        model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        if self.value_head is not None:
            save_file(self.value_head.state_dict(), path / VALUE_HEAD_FILE)

    # --- images ---------------------------------------------------------------------------
    @property
    def image_placeholder(self) -> str | None:
        """The prompt text standing for one image (a VLM's image token per image feature); None for
        text LMs. LLaVA states the count (``image_seq_length``); Idefics3/SmolVLM merge
        ``scale_factor^2`` patches into one token."""
        config = self.model.config
        if not hasattr(config, "vision_config"):
            return None
        token = self.tokenizer.convert_ids_to_tokens(config.image_token_id)
        if hasattr(config, "image_seq_length"):
            return token * config.image_seq_length
        vision = config.vision_config
        return token * ((vision.image_size // vision.patch_size) ** 2 // config.scale_factor**2)

    def pixel_values(self, images: Sequence[np.ndarray | None] | None) -> torch.Tensor | None:
        """uint8 ``[H, W, 3]`` images as the vision tower's input: resized (bilinear) to its
        ``image_size`` where they differ, scaled to ``[-1, 1]`` (SigLIP's and the tiny models'
        normalisation), ``[B, 3, S, S]``; ``[B, 1, 3, S, S]`` for Idefics3 (one image per prompt)."""
        if images is None or all(image is None for image in images):
            return None
        if any(image is None for image in images):
            raise ValueError("a batch mixes image and text-only prompts")
        return self.vision_input(torch.as_tensor(np.stack(images), device=self.device))

    def vision_input(self, images: torch.Tensor) -> torch.Tensor:
        """:meth:`pixel_values` of a ``[B, H, W, 3]`` uint8 tensor (an exported graph's image input)."""
        pixels = images.permute(0, 3, 1, 2).float() / 255.0
        size = self.model.config.vision_config.image_size
        if pixels.shape[-2:] != (size, size):
            pixels = F.interpolate(pixels, size=(size, size), mode="bilinear", align_corners=False)
        pixels = (pixels - 0.5) / 0.5
        return pixels[:, None] if self.model.config.model_type == "idefics3" else pixels

    # --- sampling -------------------------------------------------------------------------
    @property
    def samples_exact_log_probs(self) -> bool:
        """Whether :meth:`generate`'s recorded log-probs are the float32 policy's (else a learner
        rescores its rollouts before using them as the old policy's)."""
        return self.generation.dtype == "float32"

    def _sampling_model(self) -> nn.Module:
        """The model :meth:`generate` runs: ``self.model``, or for ``generation.dtype`` bfloat16 a copy
        with bfloat16 parameters (not a submodule: checkpoints never see it), refreshed whenever a
        parameter of ``self.model`` changed in place since (optimiser steps, ``load_state_dict``; the
        tensors' version counters say so) or the model was replaced (``add_lora``)."""
        dtype = SAMPLING_DTYPES[self.generation.dtype]
        if dtype == torch.float32:
            return self.model
        version = sum(p._version for p in self.model.parameters())
        if self._sampler is None or self._sampler[0] is not self.model:
            sampler = copy.deepcopy(self.model).requires_grad_(False)
            for param in sampler.parameters():
                param.data = param.data.to(dtype)
            self._sampler = (self.model, sampler, version)
        elif self._sampler[2] != version:
            with torch.no_grad():
                for low, param in zip(self._sampler[1].parameters(), self.model.parameters(), strict=True):
                    low.copy_(param)
            self._sampler = (self.model, self._sampler[1], version)
        return self._sampler[1]

    def _decoder(self, model: nn.Module) -> LlamaDecoder | None:
        """rlft's decode step for the sampling ``model`` (``None``: transformers' modules decode), its
        fused weights rebuilt whenever a parameter of ``model`` changed in place or ``model`` is another."""
        if self.generation.decoder != "rlft":
            return None
        version = sum(p._version for p in model.parameters())
        if self._fused is None or self._fused[0] is not model or self._fused[1] != version:
            self._fused = (model, version, LlamaDecoder.build(model))
        return self._fused[2]

    def _prefill(self, prompts: Sequence[Sequence[int]], pixels: torch.Tensor | None, model: nn.Module
                 ) -> tuple[torch.Tensor, object, torch.Tensor, torch.Tensor]:
        """Run the prompts through the model into a KV cache: ``(last logits [B, V], cache,
        attention mask [B, T], next position [B])``.

        Prompts share their system prompt and chat template, so the longest common prefix (text
        prompts of a batch, at least :data:`MIN_SHARED_PREFIX` tokens) is computed once and its
        cache copied to every row; each row's remaining tokens follow it left-padded, masked pads
        between, with positions continuing from the prefix: the same attention and positions as
        one left-padded batch, a fraction of the prefill FLOPs.
        """
        device, batch = self.device, len(prompts)
        shared = self._shared_prefix(prompts, None) if pixels is None else 0
        prefix = torch.as_tensor(list(prompts[0][:shared]), dtype=torch.long, device=device)[None]
        _, cache = self._prefix_cache(prefix, batch, model, logits_to_keep=LAST_POSITION)
        width = max(len(p) for p in prompts) - shared
        pads = [width - len(p) + shared for p in prompts]
        input_ids = torch.tensor([[self.pad_id] * n + list(p[shared:]) for n, p in zip(pads, prompts)], device=device)
        suffix = torch.tensor([[0] * n + [1] * (width - n) for n in pads], device=device)
        positions = shared + (suffix.cumsum(-1) - 1).clamp(min=0)
        attention = torch.cat([torch.ones((batch, shared), dtype=torch.long, device=device), suffix], dim=1)
        vision = {} if pixels is None else {"pixel_values": pixels.to(next(model.parameters()).dtype)}
        logits = model(input_ids=input_ids, attention_mask=attention, position_ids=positions, cache=cache,
                       use_cache=True, logits_to_keep=LAST_POSITION, **vision).logits[:, -1]
        return logits, cache, attention, positions[:, -1] + 1

    @torch.no_grad()
    def generate(self, prompts: Sequence[Sequence[int]], greedy: bool = False,
                 generator: torch.Generator | None = None,
                 images: Sequence[np.ndarray | None] | None = None,
                 temperature: float | None = None) -> list[Generation]:
        """Sample one reply per prompt (a batch, left-padded) with a KV cache.

        Each reply stops at the eos token or after ``max_new_tokens``. The log-probability of each
        sampled token under ``softmax(logits / temperature)`` is recorded as it is sampled.
        ``images`` (one per prompt) feed a VLM's vision tower in the first forward pass.
        ``temperature`` samples at another temperature than the policy's (evaluation; the recorded
        log-probs are then under that temperature, not the policy's).
        """
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("generate needs a non-empty batch of non-empty prompts")
        device, batch = self.device, len(prompts)
        model = self._sampling_model()
        logits, cache, attention, next_position = self._prefill(prompts, self.pixel_values(images), model)
        decoder = self._decoder(model)
        if decoder is not None:
            decoder.start(cache, attention, self.generation.max_new_tokens - 1)
        steps: list[torch.Tensor] = []  # per step, the [B] sampled ids and their log-probs, kept on the device
        chosen_log_probs: list[torch.Tensor] = []
        finished = torch.zeros(batch, dtype=torch.bool, device=device)
        for step in range(self.generation.max_new_tokens):
            step_log_probs = self._log_softmax(logits, temperature)
            if greedy:
                token = step_log_probs.argmax(-1)
            else:
                token = sample_categorical(step_log_probs, generator)
            steps.append(token)
            chosen_log_probs.append(step_log_probs.gather(-1, token[:, None]).squeeze(-1))
            finished |= token == self.eos_id
            if step == self.generation.max_new_tokens - 1 or bool(finished.all()):
                break
            if decoder is not None:
                logits = decoder.step(token, next_position)
            else:
                attention = torch.cat([attention, torch.ones((batch, 1), dtype=torch.long, device=device)], dim=1)
                logits = model(input_ids=token[:, None], attention_mask=attention,
                               position_ids=next_position[:, None], cache=cache, use_cache=True).logits[:, -1]
            next_position = next_position + 1
        return self._replies(torch.stack(steps, dim=1), torch.stack(chosen_log_probs, dim=1))

    def _replies(self, tokens: torch.Tensor, log_probs: torch.Tensor) -> list[Generation]:
        """Each row of the sampled ``tokens [B, T]`` (and their ``log_probs``) up to its first eos token."""
        ended = tokens == self.eos_id
        lengths = torch.where(ended.any(-1), ended.int().argmax(-1) + 1, tokens.shape[1]).tolist()
        rows, values = tokens.tolist(), log_probs.tolist()  # one host copy per reply batch
        replies = []
        for row, lps, n in zip(rows, values, lengths):
            replies.append(Generation(row[:n], lps[:n], self.tokenizer.decode(row[:n], skip_special_tokens=True),
                                      n > 0 and row[n - 1] == self.eos_id))
        return replies

    # --- training -------------------------------------------------------------------------
    def score(self, sequences: Sequence[Sequence[int]],
              images: Sequence[np.ndarray | None] | None = None) -> tuple[SequenceScores, torch.Tensor]:
        """One forward pass over right-padded sequences: ``(scores, attention mask [B, L])``."""
        device = self.device
        width = max(len(s) for s in sequences)
        input_ids = torch.full((len(sequences), width), self.pad_id, dtype=torch.long, device=device)
        attention = torch.zeros_like(input_ids)
        for i, seq in enumerate(sequences):
            input_ids[i, : len(seq)] = torch.as_tensor(list(seq), device=device)
            attention[i, : len(seq)] = 1
        logits, hidden = self._forward_sequences(input_ids, attention, self.pixel_values(images),
                                                 self._shared_prefix(sequences, images))
        log_softmax = self._log_softmax(logits[:, :-1])
        taken = log_softmax.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
        taken = taken.masked_fill(torch.isinf(taken), 0.0)  # prompt image tokens: never the policy's to write
        entropy = -(log_softmax.exp() * log_softmax.clamp(min=-1e9)).sum(-1)
        zero = torch.zeros((len(sequences), 1), device=device)
        scores = SequenceScores(
            log_probs=torch.cat([zero, taken], dim=1) * attention,
            entropy=torch.cat([zero, entropy], dim=1) * attention,
            hidden=hidden,
        )
        return scores, attention

    def _shared_prefix(self, sequences: Sequence[Sequence[int]], images: Sequence[np.ndarray | None] | None) -> int:
        """How many leading tokens every sequence of a text-only batch shares (0 below :data:`MIN_SHARED_PREFIX`)."""
        if len(sequences) < 2 or (images is not None and any(image is not None for image in images)):
            return 0
        shared = shared_prefix_length(sequences)
        return shared if shared >= MIN_SHARED_PREFIX else 0

    def _prefix_cache(self, prefix: torch.Tensor, batch: int, model: nn.Module,
                      **forward: object) -> tuple[object | None, object]:
        """A KV cache of ``batch`` rows that all start with ``prefix`` [1, S]: the prefix runs through
        ``model`` once, at batch 1 (``forward`` are extra model arguments), and its cache is copied to
        every row. Returns ``(the prefix's model output, cache)``; an empty prefix gives ``(None, empty cache)``."""
        from transformers import DynamicCache

        cache = DynamicCache(config=model.config)
        if prefix.shape[1] == 0:
            return None, cache
        positions = torch.arange(prefix.shape[1], device=prefix.device)[None]
        out = model(input_ids=prefix, position_ids=positions, cache=cache, use_cache=True, **forward)
        cache.batch_repeat_interleave(batch)
        return out, cache

    def _forward_sequences(self, input_ids: torch.Tensor, attention: torch.Tensor, pixels: torch.Tensor | None,
                           shared: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits [B, L, V], last hidden states [B, L, H])`` of right-padded sequences; the first
        ``shared`` tokens (the same in every row) go through the model once, at batch 1, and the rest
        attends to their cache, so gradients reach the shared prefix summed over the rows."""
        vision = {} if pixels is None else {"pixel_values": pixels}
        if not shared:
            out = self.model(input_ids=input_ids, attention_mask=attention, output_hidden_states=True, use_cache=False,
                             **vision)
            return out.logits, out.hidden_states[-1]
        batch, width = input_ids.shape
        head, cache = self._prefix_cache(input_ids[:1, :shared], batch, self.model, output_hidden_states=True)
        positions = torch.arange(shared, width, device=input_ids.device).expand(batch, -1)
        tail = self.model(input_ids=input_ids[:, shared:], attention_mask=attention, position_ids=positions, cache=cache,
                          use_cache=True, output_hidden_states=True)
        logits = torch.cat([head.logits.expand(batch, -1, -1), tail.logits], dim=1)
        return logits, torch.cat([head.hidden_states[-1].expand(batch, -1, -1), tail.hidden_states[-1]], dim=1)

    def score_conversations(self, conversations: Sequence[Conversation]) -> SequenceScores:
        """:meth:`score` of conversations, with their images."""
        return self.score([c.tokens for c in conversations], [c.image for c in conversations])[0]

    def token_log_probs(self, sequences: Sequence[Sequence[int]],
                        images: Sequence[np.ndarray | None] | None = None) -> torch.Tensor:
        """``[B, L]`` log-probabilities of each token given its prefix (training recomputation)."""
        return self.score(sequences, images)[0].log_probs

    def values(self, hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Value head at ``positions`` (``[N, 2]`` rows of (sequence, token index))."""
        if self.value_head is None:
            raise RuntimeError("this policy was built without a value head (value_head=True)")
        return self.value_head(hidden[positions[:, 0], positions[:, 1]])

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


VALUE_HEAD_FILE = "value_head.safetensors"
PICKLED_VALUE_HEAD_FILE = "value_head.pt"  # what rlft wrote with torch.save before: refused, never unpickled
MIN_SHARED_PREFIX = 8  # shorter common prefixes are not worth a separate forward pass


def _value_head_file(folder: Path) -> Path | None:
    """The value head saved in ``folder``, its header checked, or ``None`` (a fresh head). One that
    rlft saved with torch.save before is refused, not read even with weights_only=True: that guard
    has been bypassed before (CVE-2025-32434, torch < 2.6) and rlft unpickles no model file."""
    head = folder / VALUE_HEAD_FILE
    if head.is_file():
        check_safetensors(head)
        return head
    pickled = folder / PICKLED_VALUE_HEAD_FILE
    if pickled.is_file():
        raise UnsafeModelFileError(
            f"{pickled} is a pickle (a value head saved by an older rlft) and rlft never unpickles model files; "
            f"convert it where you trust it: safetensors.torch.save_file(torch.load('{pickled}', weights_only=True), "
            f"'{head}')")
    return None


def sample_categorical(log_probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One index per row of ``log_probs [B, V]`` drawn from ``softmax(log_probs)``, by inverting the
    cumulative distribution at one uniform number per row.

    The same distribution as ``torch.multinomial(log_probs.exp(), 1)``, which draws an exponential
    number for every entry of the vocabulary (49,152 for SmolLM2) and was a sizeable part of a CPU
    decode step; this draws one uniform number per row. ``right=True`` never lands on a
    zero-probability entry.
    """
    cdf = log_probs.exp().cumsum(-1)
    u = torch.rand(cdf.shape[0], 1, generator=generator, device=cdf.device, dtype=cdf.dtype) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp(max=cdf.shape[-1] - 1)


def shared_prefix_length(prompts: Sequence[Sequence[int]]) -> int:
    """Length of the prompts' longest common prefix, leaving every prompt at least one token."""
    shortest = min(len(p) for p in prompts)
    first = prompts[0]
    for length in range(shortest - 1):
        token = first[length]
        if any(p[length] != token for p in prompts):
            return length
    return shortest - 1


def add_lora(model: nn.Module, settings: LoraSettings) -> nn.Module:
    """Wrap ``model`` with trainable LoRA adapters; the base weights are frozen."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=settings.target_modules, task_type="CAUSAL_LM")
    return get_peft_model(model, config)


class ChatAgent:
    """An :class:`LLMPolicy` as the evaluator's batch ``act``: text observations in, replies out.

    Keeps one dialogue per env: with ``context="episode"`` each observation extends it
    token-exactly, with ``"turn"`` each turn is prompted afresh. Replies are greedy, or sampled
    (at ``temperature``, default the policy's). ``reset(num_envs)`` starts new
    dialogues (the evaluator calls it at every vector reset).
    """

    def __init__(self, policy: LLMPolicy, chat: ChatFormat, context: str = "turn", greedy: bool = True,
                 generator: torch.Generator | None = None, temperature: float | None = None):
        if context not in ("episode", "turn"):
            raise ValueError(f"context must be 'episode' or 'turn', got {context!r}")
        self.policy, self.chat, self.context = policy, chat, context
        self.greedy, self.generator, self.temperature = greedy, generator, temperature
        self._dialogues: list[Conversation | None] = []

    def reset(self, num_envs: int) -> None:
        self._dialogues = [None] * num_envs

    def reseed(self, seed: int) -> None:
        """Sample replies from ``seed`` on (the evaluator's seeded policy noise)."""
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, observations: Sequence[str] | Mapping[str, Any]) -> tuple[str, ...]:
        batch = unbatch_observations(observations)
        if len(self._dialogues) != len(batch):
            self.reset(len(batch))
        for i, observation in enumerate(batch):
            dialogue = self._dialogues[i]
            if dialogue is None or self.context == "turn":
                self._dialogues[i] = self.chat.start(observation)
            else:
                self.chat.extend(dialogue, observation)
        replies = self.policy.generate([d.tokens for d in self._dialogues], greedy=self.greedy,
                                       generator=self.generator, images=[d.image for d in self._dialogues],
                                       temperature=self.temperature)
        for dialogue, reply in zip(self._dialogues, replies):
            dialogue.extend_reply(reply, self.chat.end_of_turn)
        return tuple(reply.text for reply in replies)


def unbatch_observations(observations: Sequence[str] | Mapping[str, Any]) -> list[Observation]:
    """A vector env's batched observations (a tuple of strings, or a dict of batched fields) per env."""
    if isinstance(observations, Mapping):
        count = len(observations["text"])
        return [{key: value[i] for key, value in observations.items()} for i in range(count)]
    return list(observations)
