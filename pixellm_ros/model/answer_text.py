"""The text of an answer: the words that name each target, the readable answer, and whether the text has
started to repeat itself (the repetition guard of SamplingConfig)."""
from __future__ import annotations

import re
from typing import Sequence

from .tokenizer import PixelLMTokenizer


def tail_repeats(ids: Sequence[int], n: int) -> int:
    """How many times in a row the last n ids repeat at the end of `ids` (1: no repetition)."""
    if len(ids) < n:
        return 0
    count, end = 1, len(ids) - n
    while end >= n and ids[end - n:end] == ids[-n:]:
        count, end = count + 1, end - n
    return count


WORD = re.compile(r"\w+")


def ends_in_word_run(text: str, count: int) -> bool:
    """Whether the last `count` words of `text` are one word, case and punctuation ignored: loops such as
    "bowl, bowl bowl, bowl," whose irregular commas no token n-gram repeats."""
    words = WORD.findall(text.lower())
    return len(words) >= count and len(set(words[-count:])) == 1


_LEAD = re.compile(r"^(?:(?:and|or|also|then|sure|yes|ok|okay|here)\b[,!]?\s*|[,;]\s*)+", re.IGNORECASE)
_TRAIL = re.compile(r"(?:\s*\b(?:is|are|at|in|here)|\s*[:,])+$", re.IGNORECASE)


def target_phrase(span_text: str) -> str:
    """The words naming a target: the clause just before its codebook group, without fillers.

    "Here they are: the rocket" -> "the rocket"; ", the tower" -> "the tower"; "The cat is" -> "The cat".
    """
    clause = re.split(r"[.:;!?](?:\s|$)", span_text.strip())[-1] if span_text.strip() else ""
    clause = _TRAIL.sub("", _LEAD.sub("", clause.strip())).strip(" ,")
    return clause or span_text.strip(" ,.:")


def readable_answer(tokenizer: PixelLMTokenizer, ids: Sequence[int]) -> str:
    seg = set(tokenizer.seg_token_ids)
    text = tokenizer.decode([i for i in ids if i not in seg], skip_special_tokens=True)
    return re.sub(r"\s+([.,;:!?])", r"\1", re.sub(r"\s{2,}", " ", text)).strip()
