"""Online learners: the off-policy skeleton (TD3, SAC family), the replay buffer and online
interaction; the PPO core and its policy families (Gaussian, DPPO, residual)."""
