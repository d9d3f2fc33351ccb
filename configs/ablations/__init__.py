"""Ablation files: each file's ``get_ablation()`` returns an rl_jax.ablation.Ablation."""
