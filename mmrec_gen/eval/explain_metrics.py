"""Metrics of an explanation file (`mmrec explain --out FILE`): grounding, length, diversity and genre accuracy.

An explanation row (one per user) holds, besides `user_id`, `item_id`, `title` and `meta` (with `mode: explain`)::

    "explanation": str or null,          the text (null on an error row, which also sets "error")
    "hallucinated_titles": [str],        titles the text mentions that are neither in the user's history nor
                                         among the candidates (catalogue titles, or quoted unknown titles)
    "cited_history": [str],              history titles the text mentions (older files: "cites_history": bool)
    "evidence": [{"item_id", "title", "shared"}],  the history items the prompt gave as evidence
    "item_genres": [str],                the recommended item's genres
    "meta": {..., "genres": [str]}       every genre of the dataset (the vocabulary genre mentions are read from)

Both `mmrec evaluate` and `mmrec report` read an explanation file through `evaluate_explanation_file`, which checks
every row against this schema (`explanation_row_problem`, types included) and names the file, line and field of
the first row that does not fit: a title list given as one string would otherwise be read character by character.

The checks that need the whole history and catalogue (which titles a text mentions, which of them are
hallucinated) are made when the row is written (rank/explain.py); the metrics here aggregate them, so a file
can be evaluated without its dataset. Only rows with an explanation count (`n_explanations`); error rows are
counted in `n_errors` and score nothing.

Definitions (each averaged over the `n_explanations` rows unless it says otherwise):

- `hallucinated_rate`: share of explanations with at least one hallucinated title.
- `cites_history_rate`: share of explanations that mention at least one history title.
- `evidence_precision`: of all history titles cited (summed over explanations, a title counted once per
  explanation), the share that are among that row's evidence titles (compared after `normalize_title`). None when
  no explanation cites the history, or when a row has no `evidence` (a file written before grounding).
- `mean_words`: mean number of whitespace-separated words.
- `distinct_2`: distinct word bigrams / all word bigrams over all explanations (Li et al., 2016), words being the
  lowercased `\\w+` runs (with inner ' or -) of the text. None when there is no bigram.
- `genre_accuracy`: share of explanations that name the recommended item's genres correctly, over the
  explanations whose item has genres (`n_genre_rows`). A genre is named when its name, lowercased with
  non-word characters as spaces ("Sci-Fi" -> "sci fi"), or that name's plural ("comedies", "thrillers"), occurs
  in the text as whole words; the dataset's genres are the vocabulary (`meta.genres`). An explanation is correct
  when it names at least one genre and every genre it names is one of the item's: "a must-watch for any horror
  fan" for a Fantasy film is wrong, naming no genre at all is not correct either. None without a vocabulary.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mmrec_gen.data.results import iter_results
from mmrec_gen.rank.titles import normalize_title

# The keys `mmrec evaluate --json` prints for an explanation file, in this order.
JSON_KEYS = (
    "hallucinated_rate",
    "cites_history_rate",
    "evidence_precision",
    "mean_words",
    "distinct_2",
    "genre_accuracy",
    "n_explanations",
)
_WORD = re.compile(r"\w+(?:['-]\w+)*")
_NON_WORD = re.compile(r"[^\w]+")


def is_explanation_row(row: dict[str, Any]) -> bool:
    """True for a row written by `mmrec explain` (it has an `explanation` key or meta.mode == "explain")."""
    return "explanation" in row or (row.get("meta") or {}).get("mode") == "explain"


def _is_text(value: Any) -> bool:
    return isinstance(value, str)


def _is_id(value: Any) -> bool:
    return isinstance(value, str | int) and not isinstance(value, bool)


def _is_titles(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(t, str) for t in value)


def _is_evidence(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(e, dict) and isinstance(e.get("title"), str) for e in value)


# field -> (what it must be, its check); every field may also be null or absent, except user_id.
_ROW_SCHEMA = {
    "explanation": ("text", _is_text),
    "error": ("text", _is_text),
    "item_id": ("an item id", _is_id),
    "title": ("text", _is_text),
    "hallucinated_titles": ("a list of titles", _is_titles),
    "mentioned_titles": ("a list of titles", _is_titles),
    "cited_history": ("a list of titles", _is_titles),
    "cites_history": ("true or false", lambda v: isinstance(v, bool)),
    "cited_title": ("text", _is_text),
    "evidence": ('a list of {"item_id", "title"} objects', _is_evidence),
    "item_genres": ('a list of genres or one "A|B" text', lambda v: isinstance(v, str) or _is_titles(v)),
    "meta": ("an object", lambda v: isinstance(v, dict)),
}


def explanation_row_problem(row: dict[str, Any]) -> str | None:
    """What makes `row` unfit to be read as an explanation row (the module docstring's schema), naming the field;
    None for a fit row."""
    fix = "re-run `mmrec explain` (the file was edited or written by other code)"
    if not _is_id(row.get("user_id")):
        return f"'user_id' must be a user id, got {str(row.get('user_id'))[:80]!r}; {fix}"
    for key, (want, ok) in _ROW_SCHEMA.items():
        value = row.get(key)
        if value is not None and not ok(value):
            return f"'{key}' must be {want} or null, got {type(value).__name__} {str(value)[:80]!r}; {fix}"
    genres = (row.get("meta") or {}).get("genres")
    if genres is not None and not (isinstance(genres, str) or _is_titles(genres)):
        return f"'meta.genres' must be a list of genres or null, got {str(genres)[:80]!r}; {fix}"
    return None


def is_explanation_file(path: str | os.PathLike[str]) -> bool:
    """True when the first row of `path` is an explanation row (`mmrec evaluate` picks the metrics by it)."""
    for _, row in iter_results(path):
        return is_explanation_row(row)
    return False


def split_genres(value: str | Sequence[str] | None) -> list[str]:
    """'Action|Comedy', 'Action, Comedy' or ['Action', 'Comedy'] -> ['Action', 'Comedy'] (MovieLens' '(no genres
    listed)' and 'unknown' are no genre)."""
    if value is None:
        return []
    parts = re.split(r"[|,]", value) if isinstance(value, str) else list(value)
    return [p.strip() for p in parts if p.strip() and p.strip().lower() not in ("(no genres listed)", "unknown")]


def _genre_forms(genre: str) -> set[str]:
    norm = _NON_WORD.sub(" ", genre.lower()).strip()
    plural = norm[:-1] + "ies" if norm.endswith("y") else norm + "s"
    return {norm, plural} if norm else set()


def named_genres(text: str, vocabulary: Sequence[str]) -> set[str]:
    """The genres of `vocabulary` that `text` names (see the module docstring)."""
    haystack = f" {_NON_WORD.sub(' ', text.lower()).strip()} "
    return {g for g in vocabulary if any(f" {form} " in haystack for form in _genre_forms(g))}


def genre_correct(text: str, item_genres: Sequence[str], vocabulary: Sequence[str]) -> bool:
    named = named_genres(text, vocabulary)
    return bool(named) and named <= set(item_genres)


def _bigrams(text: str) -> list[tuple[str, str]]:
    words = _WORD.findall(text.lower())
    return list(zip(words, words[1:], strict=False))


def _cited(row: dict[str, Any]) -> list[str]:
    if "cited_history" in row:
        return list(row["cited_history"] or [])
    return ["?"] if row.get("cites_history") else []  # an older file: only whether it cites, not what


def explanation_metrics(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The metrics of the module docstring over `rows` (all rows of one explanation file)."""
    ok = [r for r in rows if r.get("error") is None and isinstance(r.get("explanation"), str)]
    n = len(ok)
    out: dict[str, Any] = dict.fromkeys(JSON_KEYS)
    out.update(n_explanations=n, n_errors=len(rows) - n, n_genre_rows=0)
    if not n:
        return out
    out["hallucinated_rate"] = sum(bool(r.get("hallucinated_titles")) for r in ok) / n
    out["cites_history_rate"] = sum(bool(_cited(r)) for r in ok) / n
    if all("evidence" in r and "cited_history" in r for r in ok):
        cited = hits = 0
        for r in ok:
            evidence = {normalize_title(e["title"]) for e in r["evidence"] or []}
            titles = {normalize_title(t) for t in r["cited_history"] or []}
            cited += len(titles)
            hits += len(titles & evidence)
        out["evidence_precision"] = hits / cited if cited else None
    out["mean_words"] = sum(len(r["explanation"].split()) for r in ok) / n
    bigrams = [b for r in ok for b in _bigrams(r["explanation"])]
    out["distinct_2"] = len(set(bigrams)) / len(bigrams) if bigrams else None
    vocab_rows = [r for r in ok if (r.get("meta") or {}).get("genres")]
    graded = [r for r in vocab_rows if split_genres(r.get("item_genres"))]
    out["n_genre_rows"] = len(graded)
    if graded:
        correct = sum(
            genre_correct(r["explanation"], split_genres(r["item_genres"]), split_genres(r["meta"]["genres"]))
            for r in graded
        )
        out["genre_accuracy"] = correct / len(graded)
    return out


def evaluate_explanation_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """`explanation_metrics` of one file, plus `file` and `meta`; a row that is not an explanation row, does not fit
    the schema (`explanation_row_problem`) or repeats a user raises ValueError naming the file, line and field."""
    rows, seen = [], set()
    for line_no, row in iter_results(path):
        if not is_explanation_row(row):
            raise ValueError(
                f"{path}:{line_no}: not an explanation row (no 'explanation' key, meta.mode is not 'explain'); "
                "evaluate ranking files and explanation files as separate arguments of one command, not mixed"
            )
        if row.get("user_id") is None:
            raise ValueError(f"{path}:{line_no}: 'user_id' is missing or null; re-run `mmrec explain`")
        problem = explanation_row_problem(row)
        if problem:
            raise ValueError(f"{path}:{line_no}: {problem}")
        if row["user_id"] in seen:
            raise ValueError(f"{path}:{line_no}: user {row['user_id']!r} appears twice; deduplicate the file")
        seen.add(row["user_id"])
        rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no explanation rows (the file is empty)")
    result = explanation_metrics(rows)
    result["file"] = str(path)
    result["meta"] = dict(rows[0].get("meta") or {})
    return result


_COLUMNS = (
    ("Halluc", "hallucinated_rate"),
    ("CitesHist", "cites_history_rate"),
    ("EvidPrec", "evidence_precision"),
    ("Words", "mean_words"),
    ("Distinct2", "distinct_2"),
    ("GenreAcc", "genre_accuracy"),
    ("N", "n_explanations"),
    ("Err", "n_errors"),
)


def format_explanation_table(results: list[dict[str, Any]]) -> str:
    """A plain-text table of explanation metrics (one row per file) under each file's protocol line."""
    from mmrec_gen.eval.report import protocol_line

    lines = [f"{protocol_line(r.get('meta') or {})} file={Path(str(r['file'])).name}" for r in results]
    header = ["File", "Model", *(c for c, _ in _COLUMNS)]
    body = []
    for r in results:
        cells = [Path(str(r["file"])).name, str((r.get("meta") or {}).get("model", "-"))]
        for _, key in _COLUMNS:
            value = r.get(key)
            cells.append("-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value))
        body.append(cells)
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    for cells in [header, ["-" * w for w in widths], *body]:
        lines.append(
            "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
        )
    return "\n".join(line.rstrip() for line in lines)
