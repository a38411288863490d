"""Robot-deployment export: ``rlft-export <run dir>`` writes a run's policy as a self-contained
ONNX artifact (:mod:`rlft.export.artifact`) that :mod:`rlft.deploy` runs without torch."""
