"""Experiment configs: each file's ``get_config()`` returns a ConfigDict (see rl_jax/config.py)."""
