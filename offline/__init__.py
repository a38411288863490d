"""Data: the transition dataset type, its loaders (D4RL HDF5, Minari, native) and their safety
checks, collection, demonstrations, MC returns and language transcripts. Learners live in
:mod:`rlft.agents`."""

from rlft.offline.dataset import DatasetError, TransitionDataset
from rlft.offline.loaders import load_d4rl_hdf5, load_dataset, load_minari, load_native, save_native

__all__ = ["DatasetError", "TransitionDataset", "load_d4rl_hdf5", "load_dataset", "load_minari", "load_native", "save_native"]
