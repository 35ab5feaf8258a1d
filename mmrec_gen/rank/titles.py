"""Title matching, the one place for it: normalize_title (case, Unicode form, year and article; used by explanation
checks) and mentioned_titles. The title forms themselves (year suffix, "Matrix, The" articles, display_title) live in
prompting/titles.py, below rank/ and train/, and are re-exported here for the output parser."""

from __future__ import annotations

import re
import unicodedata

from mmrec_gen.prompting.titles import (  # noqa: F401 - re-exported: the parser and the report use them from here
    TRAILING_ARTICLE,
    YEAR_SUFFIX,
    display_title,
    front_article,
    strip_year,
)

_NON_WORD = re.compile(r"[^\w]+")


def normalize_title(title: str) -> str:
    """'Matrix, The (1999)' -> 'the matrix'; punctuation and case removed, spaces collapsed."""
    text = unicodedata.normalize("NFKC", title).strip()
    text = front_article(strip_year(text))
    return _NON_WORD.sub(" ", text.lower()).strip()


def as_written_title(title: str) -> str:
    """'Silence of the Lambs, The (1991)' -> 'silence of the lambs the': normalize_title without moving the article,
    the form a text that copies a MovieLens title as written holds."""
    text = strip_year(unicodedata.normalize("NFKC", title).strip())
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
