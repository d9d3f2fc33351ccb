"""A byte-level BPE tokenizer trained from scratch, wrapped as a transformers tokenizer."""

from __future__ import annotations

from collections.abc import Iterable

import tokenizers
import transformers
from tokenizers import decoders, models, pre_tokenizers, processors, trainers


def train_bpe_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    *,
    pad_token: str = "<pad>",
    bos_token: str = "<bos>",
    eos_token: str = "<eos>",
    min_frequency: int = 2,
) -> transformers.PreTrainedTokenizerFast:
    """Trains a byte-level BPE on `texts` and wraps it as a PreTrainedTokenizerFast.

    Special tokens get ids 0 (pad), 1 (bos), 2 (eos); then the 256 byte symbols, then merges up
    to `vocab_size`. Any string encodes (bytes never go unknown) and decode(encode(s)) == s.
    No bos/eos is added on encode: the caller decides where sequences start and stop.
    The result saves and loads offline with save_pretrained / AutoTokenizer.from_pretrained.
    """
    specials = [pad_token, bos_token, eos_token]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(specials) + len(alphabet):
        raise ValueError(
            f"vocab_size {vocab_size} is below the {len(specials) + len(alphabet)} "
            "special and byte tokens of a byte-level BPE"
        )
    bpe = tokenizers.Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=specials,
        initial_alphabet=alphabet,
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        pad_token=pad_token,
        bos_token=bos_token,
        eos_token=eos_token,
    )
