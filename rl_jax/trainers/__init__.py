"""Trainers: SFT and one RL loop for PPO, GRPO and their variants (the algorithm is the config)."""
