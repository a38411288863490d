"""Registers the text tasks with gymnasium (imported by ``make_env`` through ``TaskSpec.module``).

Ids: ``rlft/NumberLine-v0``, ``rlft/NumberLineImage-v0`` (image + instruction), ``rlft/GuessNumber-v0``,
``rlft/EZPoints-v0``, ``rlft/TextMaze-v0``, ``rlft/GuessMyCity-v0``, ``rlft/Calculator-v0``,
``rlft/Text-<toy-text id>`` for Gymnasium's toy-text envs behind the language wrapper (e.g.
``rlft/Text-FrozenLake-v1``), and
``rlft/TextArena-v0`` (kwarg ``game``: a TextArena single-player game, needs ``textarena``), and
``rlft/VLA-BabyAI-v0`` (kwargs ``level``, ``split``: a BabyAI level as a VLA task, :mod:`rlft.envs.vla`)
and ``rlft/VLA-PushT-v0`` (kwarg ``split``: Push-T as a VLA task).
"""

from __future__ import annotations

import gymnasium as gym

from rlft.envs.language import VERBALIZERS

TEXT_TASKS = {
    "rlft/NumberLine-v0": "rlft.envs.text_tasks:NumberLine",
    "rlft/NumberLineImage-v0": "rlft.envs.text_tasks:NumberLineImage",
    "rlft/GuessNumber-v0": "rlft.envs.text_tasks:GuessNumber",
    "rlft/EZPoints-v0": "rlft.envs.text_tasks:EZPoints",
    "rlft/TextMaze-v0": "rlft.envs.text_tasks:TextMaze",
    "rlft/GuessMyCity-v0": "rlft.envs.text_tasks:GuessMyCity",
    "rlft/Calculator-v0": "rlft.envs.text_tasks:Calculator",
    "rlft/VLA-BabyAI-v0": "rlft.envs.vla:make_babyai_vla",
    "rlft/VLA-PushT-v0": "rlft.envs.vla:make_pusht_vla",
}

for _id, _entry in TEXT_TASKS.items():
    if _id not in gym.registry:
        gym.register(_id, entry_point=_entry, disable_env_checker=True)
if "rlft/TextArena-v0" not in gym.registry:  # kwargs game=<a TextArena -raw id>
    gym.register("rlft/TextArena-v0", entry_point="rlft.envs.textarena:TextArenaEnv", disable_env_checker=True)
for _wrapped in VERBALIZERS:
    if f"rlft/Text-{_wrapped}" not in gym.registry:
        gym.register(f"rlft/Text-{_wrapped}", entry_point="rlft.envs.language:make_language_env",
                     kwargs={"env_id": _wrapped}, disable_env_checker=True)
