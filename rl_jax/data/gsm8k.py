"""GSM8K grade-school math from the JSON-lines files of openai/grade-school-math.

Each row has ``question`` and ``answer``; the answer is a worked solution whose last line is
``#### <number>``, with calculator annotations such as ``<<48/2=24>>`` inline.

Formats:
  * prompt: ``GSM8K_TEMPLATE`` filled with the question:
    ``"Question: <question>\\nAnswer:\\n"``;
  * target: the solution with the ``<<...>>`` annotations removed, ending in ``#### <number>``;
  * answer: the number after ``####`` with commas removed, e.g. ``"1000"``;
  * ``info["format"]``: ``GSM8K_FORMAT``, a completion whose last thing is ``#### <number>``.
"""

from __future__ import annotations

import os
import re

from rl_jax.data.example import Example
from rl_jax.data.jsonl import read_jsonl, row_error

GSM8K_TEMPLATE = "Question: {question}\nAnswer:\n"
# A well-formed GSM8K completion ends with "#### <number>" (commas allowed in the number).
GSM8K_FORMAT = r"(?s).*####\s*-?[0-9][0-9,]*(\.[0-9]+)?"
_ANNOTATION = re.compile(r"<<.*?>>")
_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?")


def strip_annotations(solution: str) -> str:
    """Remove GSM8K calculator annotations: ``"48/2 = <<48/2=24>>24"`` -> ``"48/2 = 24"``."""
    return _ANNOTATION.sub("", solution)


def load_gsm8k(path: str | os.PathLike, template: str = GSM8K_TEMPLATE) -> list[Example]:
    """Read a GSM8K JSON-lines file into examples (formats in the module docstring).

    Args:
      path: a file with one ``{"question": str, "answer": str}`` object a line.
      template: the prompt, with a ``{question}`` field.

    Raises:
      ValueError: naming the path and 1-based line, for bad JSON, a missing or non-string field,
        or an answer whose last line is not ``#### <number>``.
    """
    examples = []
    for line, row in read_jsonl(path, {"question": str, "answer": str}):
        solution = row["answer"].strip()
        last_line = solution.rsplit("\n", 1)[-1]
        number = last_line.removeprefix("#### ").replace(",", "").strip()
        if not last_line.startswith("#### ") or not _NUMBER.fullmatch(number):
            raise row_error(
                path,
                line,
                f"answer ends with {last_line[-60:]!r}; expected a last line '#### <number>'",
            )
        examples.append(
            Example(
                prompt=template.format(question=row["question"]),
                target=strip_annotations(solution),
                answer=number,
                info={"format": GSM8K_FORMAT},
            )
        )
    return examples
