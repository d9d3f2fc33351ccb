"""Human-preference data for reward models: pairs, K-wise rankings, HH-RLHF, and synthetic rankings.

Every source becomes a list of ``Preference``: a prompt, ``K >= 2`` responses and their ranks
(0 = best; equal ranks are ties and form no pair). A chosen/rejected pair is ``K = 2`` with ranks
``(0, 1)``. File formats (one JSON object a line, ``.gz`` allowed):

  * ``"pairs"``: ``{"prompt": str, "chosen": str, "rejected": str}`` and an optional numeric
    ``"margin"`` (Llama 2's preference strength, used by the pairwise loss).
  * ``"rankings"``: ``{"prompt": str, "responses": [str, ...], "ranks": [int, ...]}``.
  * ``"hh_rlhf"``: Anthropic HH-RLHF, ``{"chosen": dialogue, "rejected": dialogue}``; the two share
    the text up to the last ``"\\n\\nAssistant:"``, which is the prompt (it ends with that tag).

A malformed row (a missing field, chosen equal to rejected, ranks that do not match the responses,
dialogues that do not share a prompt) raises ``ValueError("<path>:<line>: ...")``; with
``skip_invalid=True`` it is skipped and counted instead.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rl_jax.data.jsonl import read_jsonl, row_error

# The first 400 rows of HH-RLHF harmless-base test, shipped with the package (files/README.md).
HH_RLHF_PATH = Path(__file__).parent / "files" / "hh_rlhf_harmless_test_400.jsonl"
HH_ASSISTANT = "\n\nAssistant:"
PREFERENCE_FORMATS = ("pairs", "rankings", "hh_rlhf")


@dataclasses.dataclass(frozen=True)
class Preference:
    """One prompt's responses ranked by a labeller.

    Attributes:
      prompt: the text the responses answer.
      responses: ``K >= 2`` distinct responses.
      ranks: ``K`` integers, 0 = best; equal ranks are ties. At least two ranks differ.
      margin: how strongly the better response is preferred (pairs only; 0 = no margin).
    """

    prompt: str
    responses: tuple[str, ...]
    ranks: tuple[int, ...]
    margin: float = 0.0


def check_preference(pref: Preference) -> None:
    """Raises ``ValueError`` saying what is wrong with ``pref`` (see ``Preference``)."""
    k = len(pref.responses)
    if not all(isinstance(r, str) for r in pref.responses):
        raise ValueError("a response is not a string; expected strings")
    if k < 2:
        raise ValueError(f"{k} response(s); expected at least 2")
    if len(pref.ranks) != k:
        raise ValueError(f"{len(pref.ranks)} ranks for {k} responses; expected one rank each")
    if not all(isinstance(r, int) and not isinstance(r, bool) and r >= 0 for r in pref.ranks):
        raise ValueError(f"ranks {list(pref.ranks)}; expected integers >= 0")
    if len(set(pref.responses)) < k:
        raise ValueError("two responses are equal (chosen == rejected?); expected distinct ones")
    if len(set(pref.ranks)) < 2:
        raise ValueError(f"all ranks are equal {list(pref.ranks)}; expected a preference")


def split_hh_dialogue(chosen: str, rejected: str) -> tuple[str, str, str]:
    """``(prompt, chosen response, rejected response)`` of an HH-RLHF pair.

    The prompt is the text up to and including the last ``"\\n\\nAssistant:"`` of ``chosen``; the
    responses are what follows it, stripped of surrounding whitespace.

    Raises:
      ValueError: if a dialogue has no assistant turn or the two do not share that prompt.
    """
    i, j = chosen.rfind(HH_ASSISTANT), rejected.rfind(HH_ASSISTANT)
    if i < 0 or j < 0:
        raise ValueError(f"a dialogue has no {HH_ASSISTANT!r} turn")
    end = i + len(HH_ASSISTANT)
    if chosen[:end] != rejected[: j + len(HH_ASSISTANT)]:
        raise ValueError(
            "chosen and rejected differ before their last assistant turn; expected a shared prompt"
        )
    return chosen[:end], chosen[end:].strip(), rejected[j + len(HH_ASSISTANT) :].strip()


def _pair_row(row: Mapping[str, Any]) -> Preference:
    margin = row.get("margin", 0.0)
    if isinstance(margin, bool) or not isinstance(margin, (int, float)):
        raise ValueError(f"field 'margin' is a {type(margin).__name__}; expected a number")
    return Preference(row["prompt"], (row["chosen"], row["rejected"]), (0, 1), float(margin))


def _ranking_row(row: Mapping[str, Any]) -> Preference:
    return Preference(row["prompt"], tuple(row["responses"]), tuple(row["ranks"]))


def _hh_row(row: Mapping[str, Any]) -> Preference:
    prompt, chosen, rejected = split_hh_dialogue(row["chosen"], row["rejected"])
    return Preference(prompt, (chosen, rejected), (0, 1))


_FORMATS: dict[str, tuple[dict[str, type], Callable[[Mapping[str, Any]], Preference]]] = {
    "pairs": ({"prompt": str, "chosen": str, "rejected": str}, _pair_row),
    "rankings": ({"prompt": str, "responses": list, "ranks": list}, _ranking_row),
    "hh_rlhf": ({"chosen": str, "rejected": str}, _hh_row),
}


def load_preferences(
    path: str | os.PathLike, fmt: str, *, skip_invalid: bool = False
) -> tuple[list[Preference], int]:
    """The preferences of a jsonl file in format ``fmt`` and the number of rows skipped.

    Args:
      path: the file (``.gz`` is decompressed).
      fmt: one of ``PREFERENCE_FORMATS`` (see the module docstring).
      skip_invalid: skip malformed rows (and count them) instead of raising.

    Raises:
      ValueError: for an unknown format, a malformed row (naming ``path:line`` and what was
        expected) unless ``skip_invalid``, or a file with no valid row.
    """
    if fmt not in _FORMATS:
        raise ValueError(f"unknown preference format {fmt!r}; known: {PREFERENCE_FORMATS}")
    fields, parse = _FORMATS[fmt]
    skipped = 0

    def skip(_: ValueError) -> None:
        nonlocal skipped
        skipped += 1

    out = []
    for line, row in read_jsonl(path, fields, on_error=skip if skip_invalid else None):
        try:
            pref = parse(row)
            check_preference(pref)
        except ValueError as err:
            if not skip_invalid:
                raise row_error(path, line, f"{err} ({fmt} format)") from err
            skipped += 1
            continue
        out.append(pref)
    if not out:
        raise ValueError(f"{os.fspath(path)}: no valid {fmt} rows ({skipped} skipped)")
    return out, skipped


def gold_ranks(scores: np.ndarray, rng: np.random.Generator, noise: float = 0.0) -> np.ndarray:
    r"""Ranks ``[prompts, K]`` (0 = best) of responses by a gold score, with optional label noise.

    A labeller ranks by ``scores + noise * g`` with ``g`` standard Gumbel noise per response, i.e.
    draws the ranking from a Plackett-Luce model with temperature ``noise`` (0 = noiseless). The
    rank of response ``i`` is the number of responses with a strictly higher noisy score, so exact
    ties share a rank.

    Args:
      scores: ``[prompts, K]`` gold scores.
      rng: the source of the noise.
      noise: the Gumbel scale, >= 0.
    """
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    scores = np.asarray(scores, np.float64)
    if noise > 0:
        scores = scores + noise * rng.gumbel(size=scores.shape)
    return (scores[:, None, :] > scores[:, :, None]).sum(-1).astype(np.int32)


def preferences_from_responses(
    prompts: Sequence[str],
    responses: Sequence[Sequence[str]],
    ranks: np.ndarray,
) -> list[Preference]:
    """Preferences from ``[prompts, K]`` sampled responses and their ranks.

    Prompts whose ranks are all equal carry no pair and are dropped. Sampled responses may repeat
    (unlike a file's): equal responses have equal gold scores, so noiseless ranks tie them.
    """
    return [
        Preference(prompt, tuple(resp), tuple(int(r) for r in rank))
        for prompt, resp, rank in zip(prompts, responses, ranks, strict=True)
        if len(set(rank.tolist())) > 1
    ]


def expand_pairs(prefs: Sequence[Preference]) -> list[Preference]:
    """Every comparison of ``prefs`` as its own pair: the ``rankings -> shuffled pairs`` data.

    A preference with ``K`` responses gives one ``K = 2`` preference ``(better, worse)`` with ranks
    ``(0, 1)`` for each pair ``i < j`` of response indices whose ranks differ (``K(K-1)/2`` for a
    ranking without ties; tied responses form no pair), oriented so the first response is the
    better one, with the preference's prompt and margin. Pairs come in order: preference by
    preference, then ``(i, j)`` lexicographically; shuffling them across the dataset is the
    training stream's seeded permutation (``rl_jax.data.FileDataset``).
    """
    out = []
    for pref in prefs:
        k = len(pref.responses)
        for i in range(k):
            for j in range(i + 1, k):
                if pref.ranks[i] == pref.ranks[j]:
                    continue
                better, worse = (i, j) if pref.ranks[i] < pref.ranks[j] else (j, i)
                out.append(Preference(pref.prompt, (pref.responses[better], pref.responses[worse]),
                                      (0, 1), pref.margin))
    return out
