"""rlft: reinforcement-learning fine-tuning.

Offline pretraining (``rlft.offline``) produces checkpoints that online learners
(``rlft.agents``) keep improving by acting in gymnasium environments (``rlft.envs``).
Networks that act live in ``rlft.policies``; run folders, checkpoints, logging and
plots live in ``rlft.runtime``.
"""

__version__ = "0.1.0"
