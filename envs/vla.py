"""Vision-language-action tasks: a rendered scene and a language instruction in, action tokens out.

A :class:`VLAEnv` is a :class:`rlft.envs.text.TextEnv` (so the SFT -> language RL pipeline, its
rollouts, GRPO groups, evaluator and transcripts serve VLAs unchanged) whose observation is
``{"text": instruction, "image": uint8 [H, W, 3]}`` and whose action is a reply of action tokens
(:class:`rlft.envs.action_tokenizer.ActionTokenizer`): the reply is decoded to ``chunk``
actions of the scene's own action space, executed in order. The reward is binary task success
(1 when the task is solved, which ends the episode), as SimpleVLA-RL (arXiv 2509.09674) trains
(``main_ppo.py``: success, placed on the last step, times 5, which GRPO's standardisation cancels).
RL4VLA (arXiv 2505.19789) instead shapes its pick-and-place reward (gen-robot/RL4VLA@55f966d
``simpler_wrapper.py``: differences of a potential 0.1 grasped + 0.1 held for 5 steps + 1.0 on
the plate) over fixed 80-step episodes that success does not end. rlft keeps success-only rewards
for both recipes (rlft's choice): BabyAI's GoTo and Push-T have nothing to grasp, and one reward
keeps PPO and GRPO comparable on the same task; RL4VLA's recipe keeps its "done at the time
limit" (``bootstrap_truncated: false``).

**Generalisation splits** (RL4VLA Sec. 3.3 evaluates *semantic*, *visual* and *execution*
generalisation); each is a registered task of its own:

- ``train``: instruction objects from the training combinations, the level's wording, the
  agent (Push-T: the block) starting in the left half of the room;
- ``semantic``: held-out colour/object combinations (never a target in training) and
  paraphrased instructions (Push-T has one object: paraphrases only);
- ``visual``: a tinted floor (table) and pixel noise;
- ``execution``: the agent (block) starts in the right half (outside the training range).

Scenes are gym-pusht's Push-T (continuous 2-D actions, 255 bins per coordinate, OpenVLA's, the scripted
pusher's demonstrations) and BabyAI levels (``minigrid``, Chevalier-Boisvert et al. 2019) rendered as the agent's
egocentric view (BabyAI's own partial observation, 7x7 cells; ``view="full"``: the room from
above, which makes a policy locate the agent and its heading first), with ``minigrid``'s
``BabyAIBot`` as the demonstrator. With ``chunk > 1`` the bot plans each chunk on a copy of the
level; Push-T's pusher demonstrates single actions only.
"""

from __future__ import annotations

import contextlib
import copy
import io
from dataclasses import dataclass
from typing import Any, Protocol

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from rlft.envs.text import InvalidActionPolicy, Outcome, TextEnv, text_space
from rlft.envs.action_tokenizer import ActionTokenizer

SPLITS = ("train", "semantic", "visual", "execution")
VIEWS = ("agent", "full")  # the agent's egocentric 7x7 view (BabyAI's own observation), or the room from above
OBJECT_TYPES = ("ball", "box", "key")
# instruction openings and their paraphrases (the semantic split rewords every instruction)
PARAPHRASES = {"go to the ": ("walk to the ", "move to the ", "find the ", "head for the "),
               "pick up the ": ("grab the ", "take the ", "lift the ", "collect the "),
               "push the T onto the target": ("move the T block onto the goal", "slide the T to the green T",
                                              "put the T on its target", "align the T with the target")}
VISUAL_TINT = (40, 40, 90)  # floor colour of the visual split (the training floor is black)
VISUAL_NOISE = 12.0  # std of the visual split's pixel noise (uint8 levels)
MAX_REDRAWS = 200


def held_out(color: str, kind: str) -> bool:
    """Whether a colour/object combination is held out of training (4 of BabyAI's 18: blue ball,
    grey key, purple box, red ball); every colour and every object type still occurs in training."""
    from minigrid.core.constants import COLOR_NAMES

    return (COLOR_NAMES.index(color) + OBJECT_TYPES.index(kind)) % 4 == 0


@dataclass(frozen=True)
class Split:
    """What one generalisation split changes."""

    name: str
    held_out_objects: bool = False  # targets from the held-out combinations only
    paraphrase: bool = False
    start_right: bool = False  # the agent starts in the right half (training: left half)
    tint: tuple[int, int, int] | None = None
    noise_std: float = 0.0

    @classmethod
    def named(cls, name: str) -> "Split":
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; available: {SPLITS}")
        return {"train": cls("train"),
                "semantic": cls("semantic", held_out_objects=True, paraphrase=True),
                "visual": cls("visual", tint=VISUAL_TINT, noise_std=VISUAL_NOISE),
                "execution": cls("execution", start_right=True)}[name]


class Scene(Protocol):
    """What a :class:`VLAEnv` needs of the simulator behind it."""

    level: str
    action_space: gym.Space

    @property
    def image_shape(self) -> tuple[int, int, int]: ...

    def accepts(self, split: Split) -> bool:
        """Whether the episode just drawn belongs to ``split``."""

    def reset(self, seed: int) -> str:
        """Draw an episode; its instruction."""

    def image(self) -> np.ndarray:
        """The current uint8 ``[H, W, 3]`` frame."""

    def background(self, image: np.ndarray) -> np.ndarray:
        """The frame's background pixels (what the visual split tints)."""

    def step(self, action: Any) -> tuple[bool, bool, bool]:
        """``(success, terminated, truncated)`` after one action."""

    def expert(self) -> Any:
        """The demonstrator's action now."""


class BabyAIScene:
    """A BabyAI level as a VLA scene: an RGB image (egocentric or top-down), mission text, bot demonstrations."""

    def __init__(self, level: str, tile_size: int = 8, view: str = "agent", **level_kwargs: Any):
        import minigrid  # noqa: F401  registers the BabyAI ids

        if view not in VIEWS:
            raise ValueError(f"unknown view {view!r}; available: {VIEWS}")
        self.env = gym.make(level, **level_kwargs).unwrapped
        self.level, self.tile_size, self.view = level, tile_size, view
        self.action_space = spaces.Discrete(int(self.env.action_space.n))
        self._bot = None
        self._unplanned: list[int] = []  # actions taken since the bot last planned

    @property
    def image_shape(self) -> tuple[int, int, int]:
        if self.view == "agent":
            return self.env.agent_view_size * self.tile_size, self.env.agent_view_size * self.tile_size, 3
        return self.env.height * self.tile_size, self.env.width * self.tile_size, 3

    def target(self) -> tuple[str, str] | None:
        """Colour and type of the instruction's object (None for missions without one)."""
        desc = getattr(getattr(self.env, "instrs", None), "desc", None)
        return None if desc is None else (desc.color, desc.type)

    def accepts(self, split: Split) -> bool:
        """Whether the drawn episode belongs to ``split`` (target combination and start region)."""
        target = self.target()
        if target is not None and target[0] is not None and held_out(*target) != split.held_out_objects:
            return False
        right = int(self.env.agent_pos[0]) >= self.env.width // 2
        return right == split.start_right

    def reset(self, seed: int) -> str:
        """Draw the level from ``seed``; its mission text."""
        with contextlib.redirect_stdout(io.StringIO()):  # BabyAI prints every rejected placement
            self.env.reset(seed=seed)
        self._bot, self._unplanned = None, []
        return str(self.env.mission)

    def image(self) -> np.ndarray:
        if self.view == "agent":
            return self.env.get_pov_render(tile_size=self.tile_size)
        return self.env.get_full_render(highlight=False, tile_size=self.tile_size)

    @staticmethod
    def background(image: np.ndarray) -> np.ndarray:
        """The floor's pixels (black in BabyAI's renderer)."""
        return (image == 0).all(-1)

    def step(self, action: int) -> tuple[bool, bool, bool]:
        """``(success, terminated, truncated)`` after one action."""
        _, reward, terminated, truncated, _ = self.env.step(int(action))
        self._unplanned.append(int(action))
        return bool(reward > 0), bool(terminated), bool(truncated)

    def expert_chunk(self, length: int) -> list[int]:
        """The bot's next ``length`` actions, planned on a copy of the level (the scene is untouched);
        a chunk that outlasts the episode ends with the bot's last action repeated (never executed)."""
        future = copy.deepcopy(self)
        actions: list[int] = []
        ended = False
        for _ in range(length):
            if not ended:
                actions.append(future.expert())
                _, terminated, truncated = future.step(actions[-1])
                ended = terminated or truncated
            else:
                actions.append(actions[-1])
        return actions

    def expert(self) -> int:
        """The bot's action; it keeps its plan while it sees every action, else plans afresh."""
        from minigrid.utils.baby_ai_bot import BabyAIBot

        if self._bot is None or len(self._unplanned) > 1:
            self._bot, last = BabyAIBot(self.env), None
        else:
            last = self._unplanned[0] if self._unplanned else None
        self._unplanned = []
        return int(self._bot.replan(last))


class PushTScene:
    """gym-pusht's Push-T (Chi et al. 2023) as a VLA scene: the rendered scene, one instruction, the
    scripted pusher's demonstrations (:mod:`rlft.envs.pusht_controller`); the action is the
    agent's target position in pixels, ``Box(0, 512, (2,))``, tokenised per coordinate."""

    level = "gym_pusht/PushT-v0"
    instruction = "push the T onto the target"

    def __init__(self, image_size: int = 64):
        import gym_pusht  # noqa: F401  registers gym_pusht/PushT-v0

        from rlft.envs.pusht_controller import PushTController

        self.env = gym.make(self.level, obs_type="pixels_agent_pos", observation_width=image_size,
                            observation_height=image_size).unwrapped
        self.image_size = image_size
        self.action_space = self.env.action_space
        self.controller = PushTController()
        self._pixels = np.zeros((image_size, image_size, 3), np.uint8)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.image_size, self.image_size, 3

    def target(self) -> None:
        return None  # one object, one instruction

    def accepts(self, split: Split) -> bool:
        """The block starts in the left half of the table for training, the right half for ``execution``."""
        right = float(self.env.block.position[0]) >= 256.0
        return right == split.start_right

    def reset(self, seed: int) -> str:
        obs, _ = self.env.reset(seed=seed)
        self._pixels = obs["pixels"]
        self.controller.reset()
        return self.instruction

    def image(self) -> np.ndarray:
        return self._pixels.copy()

    @staticmethod
    def background(image: np.ndarray) -> np.ndarray:
        """The table's pixels (white in gym-pusht's renderer)."""
        return (image == 255).all(-1)

    def step(self, action: np.ndarray) -> tuple[bool, bool, bool]:
        obs, _, terminated, truncated, info = self.env.step(np.asarray(action, dtype=np.float32))
        self._pixels = obs["pixels"]
        return bool(info["is_success"]), bool(terminated), bool(truncated)

    def expert(self) -> np.ndarray:
        return self.controller.act(self.env)


class VLAEnv(TextEnv):
    """A scene behind an instruction-and-image observation and action-token replies (module docstring)."""

    def __init__(self, scene: Scene, split: str = "train", bins: int = 256, chunk: int = 1,
                 max_turns: int = 20, invalid_action: InvalidActionPolicy | None = None):
        super().__init__(max_turns, invalid_action)
        self.scene, self.split = scene, Split.named(split)
        self.action_tokenizer = ActionTokenizer.for_space(scene.action_space, bins, chunk)
        self.observation_space = spaces.Dict({"text": text_space(),
                                              "image": spaces.Box(0, 255, scene.image_shape, np.uint8)})
        self.instruction = ""

    def _start(self) -> str:
        for _ in range(MAX_REDRAWS):
            mission = self.scene.reset(int(self.np_random.integers(2**31 - 1)))
            if self.scene.accepts(self.split):
                break
        else:
            raise RuntimeError(f"{self.scene.level}: no episode of split {self.split.name!r} in {MAX_REDRAWS} draws")
        self.instruction = self._reword(mission) if self.split.paraphrase else mission
        return self.instruction

    def _reword(self, mission: str) -> str:
        for opening, rewordings in PARAPHRASES.items():
            if mission.startswith(opening):
                return rewordings[int(self.np_random.integers(len(rewordings)))] + mission[len(opening):]
        return mission

    def _observation(self, text: str) -> dict[str, Any]:
        image = self.scene.image()
        if self.split.tint is not None:
            image[self.scene.background(image)] = self.split.tint
        if self.split.noise_std:
            noise = self.np_random.normal(0.0, self.split.noise_std, image.shape)
            image = np.clip(image + noise, 0, 255).astype(np.uint8)
        return {"text": text, "image": image}

    def parse(self, utterance: str) -> str | None:
        indices = self.action_tokenizer.parse(utterance)
        return None if indices is None else self.action_tokenizer.text(indices)

    def admissible_actions(self) -> list[str]:
        """Every single-action reply of a discrete scene; a continuous scene's centre action
        (any ``reply_length`` action tokens are legal there)."""
        tok = self.action_tokenizer
        if tok.discrete and tok.chunk == 1:
            return tok.tokens
        return [tok.text([tok.vocabulary // 2] * tok.reply_length)]

    def _apply(self, action: str) -> Outcome:
        actions = self.action_tokenizer.decode(self.action_tokenizer.parse(action))
        success = terminated = truncated = False
        for one in actions:
            success, terminated, truncated = self.scene.step(one)
            if terminated or truncated:
                break
        return Outcome(self.instruction, float(success), terminated or success, success, truncated)

    def expert_action(self) -> str:
        """The demonstrator's next action (a chunk of them, where the scene can plan ahead)."""
        tok = self.action_tokenizer
        if tok.chunk == 1:
            return tok.text(tok.encode(self.scene.expert()))
        if not hasattr(self.scene, "expert_chunk"):
            raise ValueError(f"{type(self.scene).__name__} demonstrates one action at a time: use chunk=1")
        return tok.text(tok.encode(np.asarray(self.scene.expert_chunk(tok.chunk))))


def make_pusht_vla(split: str = "train", max_turns: int = 300, chunk: int = 1, image_size: int = 64,
                   invalid_action: InvalidActionPolicy | None = None) -> VLAEnv:
    """Push-T as a VLA task (the entry point of the ``rlft/VLA-PushT-v0`` id)."""
    return VLAEnv(PushTScene(image_size), split, chunk=chunk, max_turns=max_turns, invalid_action=invalid_action)


def make_babyai_vla(level: str = "BabyAI-GoToObj-v0", split: str = "train", max_turns: int = 20, chunk: int = 1,
                    tile_size: int = 8, view: str = "agent", invalid_action: InvalidActionPolicy | None = None,
                    **level_kwargs: Any) -> VLAEnv:
    """A BabyAI level as a VLA task (the entry point of the ``rlft/VLA-BabyAI-v0`` id)."""
    return VLAEnv(BabyAIScene(level, tile_size, view, **level_kwargs), split, chunk=chunk, max_turns=max_turns,
                  invalid_action=invalid_action)
