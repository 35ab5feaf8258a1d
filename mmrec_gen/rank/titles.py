"""Title normalisation shared by explanation checks: case, Unicode form, year suffix, "Matrix, The" articles."""

from __future__ import annotations

import re
import unicodedata

_YEAR = re.compile(r"\s*\(\d{4}(?:[-–]\d{0,4})?\)\s*$")
_TRAILING_ARTICLE = re.compile(r"^(?P<rest>.+),\s*(?P<art>the|a|an|les|la|le|il|el|die|der|das)$", re.IGNORECASE)
_NON_WORD = re.compile(r"[^\w]+")


def normalize_title(title: str) -> str:
    """'Matrix, The (1999)' -> 'the matrix'; punctuation and case removed, spaces collapsed."""
    text = unicodedata.normalize("NFKC", title).strip()
    text = _YEAR.sub("", text)
    match = _TRAILING_ARTICLE.match(text)
    if match:
        text = f"{match['art']} {match['rest']}"
    return _NON_WORD.sub(" ", text.lower()).strip()


def mentioned_titles(text: str, titles: dict[str, str], min_chars: int = 5) -> list[str]:
    """Keys of `titles` (normalised title -> display title) whose normalised title occurs in text as whole words.

    Titles shorter than `min_chars` ("It", "Heat") are skipped: they occur in ordinary prose too often. Longer titles
    are matched first and their text is masked, so "Funny Island II" does not also count as "Funny Island".
    """
    haystack = f" {normalize_title(text)} "
    found = []
    for norm in sorted(titles, key=len, reverse=True):
        if len(norm) >= min_chars and f" {norm} " in haystack:
            found.append(norm)
            haystack = haystack.replace(f" {norm} ", " \x00 ")
    return found
