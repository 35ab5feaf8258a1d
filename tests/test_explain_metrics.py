"""Explanation metrics on hand-computed fixtures, and `mmrec evaluate` on an explanation file."""

from __future__ import annotations

import json

import pytest

from mmrec_gen.cli import main
from mmrec_gen.data.results import write_results
from mmrec_gen.eval.explain_metrics import (
    JSON_KEYS,
    evaluate_explanation_file,
    explanation_metrics,
    genre_correct,
    named_genres,
)

VOCAB = ["Action", "Comedy", "Fantasy", "Horror", "Sci-Fi"]
META = {"dataset": "hand", "split": "test", "candidates_hash": "abc", "seed": 0, "model": "m", "mode": "explain",
        "template": "explain", "shots": 0, "genres": VOCAB}  # fmt: skip


def _row(uid, text, *, cited=(), evidence=(), hallucinated=(), genres=(), error=None):
    return {
        "user_id": uid,
        "item_id": "i" + uid,
        "title": "T",
        "explanation": text,
        "cited_history": list(cited),
        "cites_history": bool(cited),
        "evidence": [{"item_id": t, "title": t, "shared": []} for t in evidence],
        "hallucinated_titles": list(hallucinated),
        "mentioned_titles": [],
        "item_genres": list(genres),
        "error": error,
        "meta": META,
    }


def fixture_rows() -> list[dict]:
    return [
        # 9 words, 8 bigrams; cites Toy Story (an evidence item); names Comedy, one of the item's genres: correct.
        _row(
            "a",
            "Because you enjoyed Toy Story, this Comedy is fun.",
            cited=["Toy Story (1995)"],
            evidence=["Toy Story (1995)", "Heat (1995)"],
            genres=["Comedy", "Fantasy"],
        ),
        # 10 words ("must-watch" is one), 9 bigrams; cites Heat (evidence) and Jumanji (not evidence); one
        # hallucinated title; names Horror for a Fantasy item: wrong.
        _row(
            "b",
            "Like Heat and Jumanji, a must-watch for any horror fan.",
            cited=["Heat (1995)", "Jumanji (1995)"],
            evidence=["Heat"],
            hallucinated=["The Forest of Dreams"],
            genres=["Fantasy"],
        ),
        # 5 words, 4 bigrams of which 3 distinct; the item has no genres: not graded.
        _row("c", "A fun fun fun film.", genres=[]),
        _row("d", None, error="no ranking"),
    ]


def test_each_metric_equals_its_hand_computed_value():
    m = explanation_metrics(fixture_rows())
    assert m["n_explanations"] == 3 and m["n_errors"] == 1
    assert m["hallucinated_rate"] == pytest.approx(1 / 3)
    assert m["cites_history_rate"] == pytest.approx(2 / 3)
    # cited titles 1 + 2 = 3; among the row's evidence: Toy Story, and Heat (matched as "heat" after normalize_title).
    assert m["evidence_precision"] == pytest.approx(2 / 3)
    assert m["mean_words"] == pytest.approx((9 + 10 + 5) / 3)
    assert m["distinct_2"] == pytest.approx(20 / 21)  # 8 + 9 + 3 distinct of 8 + 9 + 4 bigrams
    assert m["genre_accuracy"] == pytest.approx(1 / 2) and m["n_genre_rows"] == 2


def test_genre_mentions_plural_hyphen_and_wrong_genres():
    assert named_genres("Great sci-fi and two comedies.", VOCAB) == {"Sci-Fi", "Comedy"}
    assert named_genres("Sci fi fans will love it", VOCAB) == {"Sci-Fi"}
    assert named_genres("It has plenty of actions and a fantastic cast", VOCAB) == {"Action"}  # not "Fantasy"
    assert genre_correct("A fantasy for every comedy fan", ["Fantasy", "Comedy", "Action"], VOCAB)
    assert not genre_correct("A must-watch for any horror fan", ["Fantasy"], VOCAB)
    assert not genre_correct("A fantasy with horror moments", ["Fantasy"], VOCAB)  # one wrong genre is enough
    assert not genre_correct("You will love it", ["Fantasy"], VOCAB)  # naming no genre is not correct


def test_files_without_evidence_or_genres_give_none_not_a_made_up_value():
    rows = [{k: v for k, v in r.items() if k != "evidence"} for r in fixture_rows()]
    for r in rows:
        r["meta"] = {k: v for k, v in META.items() if k != "genres"}
    m = explanation_metrics(rows)
    assert m["evidence_precision"] is None and m["genre_accuracy"] is None
    assert m["cites_history_rate"] == pytest.approx(2 / 3)
    empty = explanation_metrics([_row("x", None, error="boom")])
    assert empty["n_explanations"] == 0 and empty["hallucinated_rate"] is None


def test_evaluate_json_prints_exactly_the_explanation_keys(tmp_path, capsys):
    path = tmp_path / "why.jsonl"
    write_results(path, fixture_rows())
    assert main(["evaluate", "--json", str(path)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out) == list(JSON_KEYS)
    assert out["n_explanations"] == 3 and out["evidence_precision"] == pytest.approx(2 / 3)
    assert main(["evaluate", str(path)]) == 0
    table = capsys.readouterr().out
    assert "protocol: dataset=hand" in table and "0.6667" in table and "why.jsonl" in table


def test_a_ranking_row_in_an_explanation_file_is_refused_by_line(tmp_path):
    path = tmp_path / "mixed.jsonl"
    rows = fixture_rows()
    rows.insert(1, {"user_id": "z", "ranking": ["a"], "meta": {**META, "mode": "score"}})
    write_results(path, rows)
    with pytest.raises(ValueError, match=r"mixed.jsonl:2: not an explanation row"):
        evaluate_explanation_file(path)


# -- issue 23: one schema, types included, for explanation rows in `mmrec evaluate` and `mmrec report` --

BAD_FIELDS = [
    ("explanation", 123, "'explanation' must be text or null, got int '123'"),
    ("explanation", ["Because", "you"], "'explanation' must be text or null, got list"),
    ("hallucinated_titles", "Zorro", "'hallucinated_titles' must be a list of titles or null, got str 'Zorro'"),
    ("cited_history", "Heat (1995)", "'cited_history' must be a list of titles or null, got str"),
    ("evidence", ["Heat"], '\'evidence\' must be a list of {"item_id", "title"} objects or null'),
    ("cites_history", "yes", "'cites_history' must be true or false or null"),
    ("user_id", ["a"], "'user_id' must be a user id"),
]


@pytest.mark.parametrize(("field", "value", "message"), BAD_FIELDS)
def test_evaluate_refuses_a_malformed_explanation_row_naming_file_line_and_field(
    tmp_path, capsys, field, value, message
):
    """A title list given as one string was read character by character (hallucinated rate 0.0 -> 0.2, evidence
    precision 1.0 -> 0.4, exit 0); an explanation that is not text crashed `mmrec report`."""
    rows = fixture_rows()
    rows[1][field] = value
    path = tmp_path / "why.jsonl"
    write_results(path, rows)
    assert main(["evaluate", str(path)]) == 1
    assert f"{path}:2: {message}" in capsys.readouterr().err
