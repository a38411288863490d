"""Every learner (every object with an ``update``): the off-policy skeleton (TD3, SAC family) and
the offline objectives on it (SPOT, CQL/Cal-QL, IQL), TD-MPC2/FOWM, chunked BC and SFT, the replay
buffer and online interaction, the PPO core and its policy families, the language learners."""
