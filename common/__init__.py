"""The ground floor: what every other floor of rlft uses and nothing of rlft's own beneath it.

* :mod:`rlft.common.typed_config` -- config dataclasses built from YAML with every value's type and
  range checked, and the :class:`~rlft.common.typed_config.ConfigError` that names a bad one;
* :mod:`rlft.common.progress` -- progress bars on a terminal, periodic lines in logs and CI;
* :mod:`rlft.common.seeding` -- seeding and the Python/NumPy/torch RNG states a checkpoint holds.

``envs``, ``policies``, ``offline`` and ``agents`` import these from here, never from ``runtime``
(the runners' floor); ``tests/test_layout.py`` keeps the direction.
"""
