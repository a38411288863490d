"""Offline side: datasets (type, loaders, collection, demonstrations), offline objectives (SPOT, CQL/Cal-QL,
IQL) and behaviour cloning of chunked policies."""

from rlft.offline.dataset import DatasetError, TransitionDataset
from rlft.offline.loaders import load_d4rl_hdf5, load_dataset, load_minari, load_native, save_native

__all__ = ["DatasetError", "TransitionDataset", "load_d4rl_hdf5", "load_dataset", "load_minari", "load_native", "save_native"]
