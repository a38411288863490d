"""The runners' floor: the runner skeleton and the three pipelines' runners, launch, run folders,
checkpoints, logging, evaluation, plots and Ray workers (utilities every floor uses are in
:mod:`rlft.common`)."""
