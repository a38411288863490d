"""Online learners, the replay buffer and online interaction."""
