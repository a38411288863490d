"""Cross-cutting run machinery: experiment runner, checkpoints, seeding, logging, evaluation, plots."""
