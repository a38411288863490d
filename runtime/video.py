"""Episodes as MP4 files: a wrapper that renders every frame of an env (``render_mode="rgb_array"``)
and writes each finished episode with imageio's FFmpeg writer (``pip install "rlft[video]"``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

EXTRA = 'pip install "rlft[video]"'


class RecordEpisode(gym.Wrapper):
    """Renders after each reset and step and writes the episodes an evaluation counts: episode ``i``
    is the one reset with ``seed=first_seed + i`` (``i < episodes``), written when it ends as
    ``<folder>/<tag>_ep<i>.mp4`` with its reset frame first (``length + 1`` frames). Episodes reset
    without a seed (a vector env's autoreset) or outside the range are not written, so the
    recorders of a vector env's sub-envs write exactly the evaluation's episodes."""

    def __init__(self, env: gym.Env, folder: Path, tag: str, first_seed: int, episodes: int):
        super().__init__(env)
        try:
            import imageio_ffmpeg  # noqa: F401  the writer imageio uses for MP4
        except ImportError:
            raise ImportError(f"recording videos needs imageio-ffmpeg: {EXTRA}") from None
        if env.render_mode != "rgb_array":
            raise ValueError(f"recording needs an env made with render_mode='rgb_array', not {env.render_mode!r}")
        self.folder, self.tag, self.first_seed, self.episodes = Path(folder), tag, first_seed, episodes
        self.frames: list[np.ndarray] = []
        self.index: int | None = None  # the evaluation episode being recorded
        self.written: list[Path] = []

    def reset(self, **kwargs: Any):
        obs, info = self.env.reset(**kwargs)
        seed = kwargs.get("seed")
        counted = seed is not None and 0 <= seed - self.first_seed < self.episodes
        self.index = seed - self.first_seed if counted else None
        self.frames = [self._frame()] if counted else []
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        if self.index is not None:
            self.frames.append(self._frame())
            if terminated or truncated:
                self._write()
        return obs, reward, terminated, truncated, info

    def _frame(self) -> np.ndarray:
        frame = self.env.render()
        if not isinstance(frame, np.ndarray) or frame.ndim != 3:
            raise ValueError(f"{self.env.spec.id if self.env.spec else self.env}: render() gave no RGB frame "
                             f"({type(frame).__name__})")
        return frame

    def _write(self) -> None:
        import imageio.v2 as imageio

        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{self.tag}_ep{self.index}.mp4"
        fps = int(self.env.metadata.get("render_fps") or 30)
        # macro_block_size 1: frames of any size are written as they are (no resize to multiples of 16)
        imageio.mimwrite(path, self.frames, fps=fps, codec="libx264", macro_block_size=1)
        self.written.append(path)
        self.frames, self.index = [], None
