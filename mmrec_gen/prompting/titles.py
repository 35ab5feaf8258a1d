"""Title forms, below rank/ and train/ (which both cite titles): the year suffix and "Matrix, The" articles of
MovieLens-style titles, and `display_title`, the form a sentence names a title in (explanations cite it, training
targets too). rank/titles.py builds its matching (normalize_title, mentioned_titles) on these."""

from __future__ import annotations

import re

# "(1999)", "( 1999 )", "(1999-2003)", "(1999–)": the year suffix of MovieLens-style titles.
YEAR_SUFFIX = re.compile(r"\s*\(\s*\d{4}(?:\s*[-–]\s*\d{0,4})?\s*\)\s*$")
# "Matrix, The" -> "The Matrix" (MovieLens moves leading articles to the end).
TRAILING_ARTICLE = re.compile(r"^(?P<rest>.+),\s*(?P<art>the|a|an|les|la|le|l'|il|el|die|der|das)$", re.IGNORECASE)


def strip_year(title: str) -> str:
    return YEAR_SUFFIX.sub("", title).strip()


def front_article(title: str) -> str:
    """'Matrix, The' -> 'The Matrix'; other titles unchanged."""
    match = TRAILING_ARTICLE.match(title)
    return f"{match['art']} {match['rest']}" if match else title


def display_title(title: str) -> str:
    """'Matrix, The (1999)' -> 'The Matrix (1999)': the title as a sentence names it (rank/titles.py's
    mentioned_titles finds it again); other titles unchanged."""
    match = YEAR_SUFFIX.search(title)
    year = match.group(0) if match else ""
    return front_article(title[: match.start()] if match else title) + year
