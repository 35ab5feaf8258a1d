"""Explanation checks: hallucinated titles and history citations on hand-written explanations."""

from __future__ import annotations

from mmrec_gen.rank.explain import check_explanation, explanation_summary
from mmrec_gen.rank.titles import normalize_title

CATALOGUE = {
    normalize_title(t): t for t in ["Matrix, The (1999)", "Toy Story (1995)", "Heat (1995)", "Jumanji (1995)"]
}


def test_normalize_title_moves_articles_and_drops_years():
    assert normalize_title("Matrix, The (1999)") == "the matrix"
    assert normalize_title("  TOY story (1995) ") == "toy story"


def test_cites_history_and_no_hallucination():
    checks = check_explanation(
        "Since you loved The Matrix, Jumanji is a fun pick.", ["Matrix, The (1999)"], ["Jumanji (1995)"], CATALOGUE
    )
    assert checks["cites_history"] is True
    assert checks["hallucinated_titles"] == []
    assert set(checks["mentioned_titles"]) == {"Matrix, The (1999)", "Jumanji (1995)"}


def test_catalogue_title_outside_history_and_candidates_is_hallucinated():
    checks = check_explanation(
        "You enjoyed Toy Story, so try Jumanji.", ["Matrix, The (1999)"], ["Jumanji (1995)"], CATALOGUE
    )
    assert checks["hallucinated_titles"] == ["Toy Story (1995)"]
    assert checks["cites_history"] is False


def test_quoted_unknown_title_is_hallucinated():
    checks = check_explanation('Like "The Forest of Dreams", Jumanji is magical.', [], ["Jumanji (1995)"], CATALOGUE)
    assert checks["hallucinated_titles"] == ["The Forest of Dreams"]


def test_short_titles_do_not_match_ordinary_words():
    checks = check_explanation("The heat of the moment makes this great.", [], ["Jumanji (1995)"], CATALOGUE)
    assert checks["mentioned_titles"] == []


def test_summary_rates():
    rows = [
        {"error": None, "cites_history": True, "hallucinated_titles": [], "explanation": "a b c"},
        {"error": None, "cites_history": False, "hallucinated_titles": ["X"], "explanation": "a"},
        {"error": "no ranking", "explanation": None},
    ]
    s = explanation_summary(rows)
    assert s == {"n_users": 3, "n_errors": 1, "cites_history_rate": 0.5, "hallucination_rate": 0.5, "mean_words": 2.0}


def test_a_sequel_title_does_not_also_count_as_its_prequel():
    catalogue = {normalize_title(t): t for t in ["Funny Island", "Funny Island II"]}
    checks = check_explanation("You will love Funny Island II.", [], ["Funny Island II"], catalogue)
    assert checks["mentioned_titles"] == ["Funny Island II"] and checks["hallucinated_titles"] == []
    both = check_explanation("After Funny Island, Funny Island II.", ["Funny Island"], ["Funny Island II"], catalogue)
    assert sorted(both["mentioned_titles"]) == ["Funny Island", "Funny Island II"] and both["cites_history"] is True
