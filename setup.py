"""rl_jax: reinforcement learning for language models in JAX/Flax."""

import setuptools

setuptools.setup(
    name="rl_jax",
    version="0.1.0",
    description="PPO, GRPO and reward models for language models, in JAX and Flax.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=setuptools.find_packages(include=["rl_jax", "rl_jax.*"]),
    package_data={"rl_jax.data": ["files/*.jsonl", "files/LICENSE*", "files/README.md"]},
    python_requires=">=3.10",
    # Lower bounds are the versions tested here (2026-11); pip takes the newest it finds.
    install_requires=[
        "jax>=0.10.2",
        "flax>=0.12.8",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12.8",
        "ml_collections>=1.1.0",
        "absl-py>=2.5.1",
        "transformers>=5.24.0",
        "tokenizers>=0.23.3",
        "safetensors>=0.8.0",
        "gguf>=0.19.0",  # reads llama.cpp .gguf files (rl_jax.models.gguf)
        "numpy>=2.0",
        "scipy>=1.11",  # Student t and noncentral t (rl_jax.ablation's intervals and seed counts)
        "chex>=0.1.92",
        "tensorboardX>=2.6",
        "tqdm>=4.66",
        "matplotlib>=3.8",
    ],
    extras_require={
        "test": [
            "pytest>=8.0",
            "hypothesis>=6.100",
            # The README's test command runs the tests in 2 worker processes (-n 2).
            "pytest-xdist>=3.5",
            # Test-only: reference outputs from transformers. 2.13.0 has a local CPU build here.
            "torch==2.13.0",
            # Test-only: transformers needs it to read a GGUF file (the real-model reference).
            "accelerate>=1.16.0",
        ],
        # experiments/benchmarks/real.py: TRL's GRPOTrainer on the same model (1.16.0 tested here;
        # it brings datasets, pandas, pyarrow). With torch and accelerate from "test".
        "bench": [
            "trl>=1.16.0",
            "torch==2.13.0",
            "accelerate>=1.16.0",
        ],
    },
)
