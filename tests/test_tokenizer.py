"""The from-scratch byte-level BPE tokenizer: training, special tokens, round trips."""

from __future__ import annotations

import pytest
import transformers

from rl_jax.models import train_bpe_tokenizer

TEXTS = [
    "the cat sat on the mat",
    "the dog sat on the log",
    "one plus one is two, two plus two is four",
] * 30


@pytest.fixture(scope="module")
def tokenizer() -> transformers.PreTrainedTokenizerFast:
    return train_bpe_tokenizer(iter(TEXTS), vocab_size=300)


def test_special_tokens_and_vocab(tokenizer):
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert (tokenizer.pad_token, tokenizer.bos_token, tokenizer.eos_token) == (
        "<pad>", "<bos>", "<eos>"
    )
    assert 259 < len(tokenizer) <= 300  # specials + 256 bytes + some merges
    assert len(tokenizer.encode("the cat sat on the mat")) < len("the cat sat on the mat")


@pytest.mark.parametrize("text", ["the cat sat", " leading and  double spaces ", "ünïcødé ✓ 😀",
                                  "tab\tnew\nline", ""])
def test_encode_decode_round_trip(tokenizer, text):
    ids = tokenizer.encode(text)
    assert all(i > 2 for i in ids)  # no bos/eos added, nothing unknown
    assert tokenizer.decode(ids) == text


def test_save_load_round_trip(tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tokenizer.save_pretrained(tmp_path)
    loaded = transformers.AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    text = "the dog sat on one mat ✓"
    assert loaded.encode(text) == tokenizer.encode(text)
    assert loaded.decode(loaded.encode(text)) == text
    assert (loaded.pad_token_id, loaded.bos_token_id, loaded.eos_token_id) == (0, 1, 2)
    batch = loaded(["the cat", "one plus one is two"], padding=True)
    assert batch["input_ids"][0][-1] == 0 and batch["attention_mask"][0][-1] == 0


def test_vocab_too_small():
    with pytest.raises(ValueError, match="vocab_size 100"):
        train_bpe_tokenizer(TEXTS, vocab_size=100)
