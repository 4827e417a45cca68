"""Cut a recorded text back into stream pieces for replay."""

from __future__ import annotations

import re

__all__ = ["pieces"]

_WORD = re.compile(r"\s*\S+|\s+")


def pieces(text: str, n: int) -> list[str]:
    """``text`` in at most ``n`` pieces, cut before words; they join back to ``text``."""
    if n <= 1 or not text:
        return [text] if text else []
    words = _WORD.findall(text)
    if len(words) <= n:
        return words
    size, extra = divmod(len(words), n)
    out, i = [], 0
    for k in range(n):
        step = size + (1 if k < extra else 0)
        out.append("".join(words[i : i + step]))
        i += step
    return out
