"""Title normalisation, the one place for it: the year suffix and "Matrix, The" articles (used by the output
parser's title matching), and normalize_title (case, Unicode form; used by explanation checks)."""

from __future__ import annotations

import re
import unicodedata

# "(1999)", "( 1999 )", "(1999-2003)", "(1999–)": the year suffix of MovieLens-style titles.
YEAR_SUFFIX = re.compile(r"\s*\(\s*\d{4}(?:\s*[-–]\s*\d{0,4})?\s*\)\s*$")
# "Matrix, The" -> "The Matrix" (MovieLens moves leading articles to the end).
TRAILING_ARTICLE = re.compile(r"^(?P<rest>.+),\s*(?P<art>the|a|an|les|la|le|l'|il|el|die|der|das)$", re.IGNORECASE)
_NON_WORD = re.compile(r"[^\w]+")


def strip_year(title: str) -> str:
    return YEAR_SUFFIX.sub("", title).strip()


def front_article(title: str) -> str:
    """'Matrix, The' -> 'The Matrix'; other titles unchanged."""
    match = TRAILING_ARTICLE.match(title)
    return f"{match['art']} {match['rest']}" if match else title


def normalize_title(title: str) -> str:
    """'Matrix, The (1999)' -> 'the matrix'; punctuation and case removed, spaces collapsed."""
    text = unicodedata.normalize("NFKC", title).strip()
    text = front_article(strip_year(text))
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
