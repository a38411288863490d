"""Hydra config tree (a package so ``pkg://rlft.configs`` resolves when installed)."""
