"""parse_ranking: every output format, counters, never raising, permutations (docs/RELIABILITY.md R1, R2)."""

from __future__ import annotations

import dataclasses
import logging
import random
import string

import pytest

from mmrec_gen.rank import parsing
from mmrec_gen.rank.parsing import MAX_SCAN_CHARS, CandidateView, ParseResult, parse_ranking

TITLES = [
    "Toy Story (1995)",
    "Jumanji (1995)",
    "Heat (1995)",
    "American President, The (1995)",
    "Up (2009)",
    "Sabrina (1995)",
]
# Labels A-F, ids "i0".."i5" in display order.
CANDS = [CandidateView(f"i{n}", chr(65 + n), title) for n, title in enumerate(TITLES)]
IDS = [c.item_id for c in CANDS]
HISTORY = ["Toy Story 2 (1999)", "Casino (1995)"]
CATALOGUE = [*TITLES, *HISTORY, "Heat (1986)", "Grumpier Old Men (1995)"]


def parse(text: str, cands=CANDS, history=HISTORY, catalogue=CATALOGUE) -> ParseResult:
    return parse_ranking(text, cands, history, catalogue)


def errs(result: ParseResult) -> dict[str, int]:
    return {k: v for k, v in result.errors.items() if v}


def ids(*labels: str) -> list[str]:
    """Expected ranking: the given labels first, then the missing candidates in display order."""
    head = [f"i{ord(label) - 65}" for label in labels]
    return head + [i for i in IDS if i not in head]


def assert_permutation(result: ParseResult, cands=CANDS) -> None:
    assert sorted(result.ranking) == sorted(c.item_id for c in cands)
    assert len(result.ranking) == len(cands)


# --- empty / prose -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "   \n\t", "I'm not sure what you would like.", "I think A is best"])
def test_no_candidate_mentioned_is_invalid_in_display_order(text):
    result = parse(text)
    assert result.ranking == IDS
    assert result.valid is False
    assert errs(result) == {"invalid": 1, "missing": 6}
    assert result.matched == []


def test_none_and_non_str_never_raise():
    for bad in (None, 123):
        result = parse_ranking(bad, CANDS)  # type: ignore[arg-type]
        assert result.ranking == IDS
        assert result.valid is False
    # Undecoded bytes from a backend are read as UTF-8.
    assert parse_ranking(b"C, A", CANDS).ranking == ids("C", "A")  # type: ignore[arg-type]


def test_prose_letters_are_not_labels_but_cued_letters_are():
    # "I" and "A" inside a sentence are words, not labels.
    assert parse("I think A is the best one for you").errors["invalid"] == 1
    assert parse("A great pick would be something light.").errors["invalid"] == 1
    # After a cue word a letter is a label, even without a delimiter on its right.
    result = parse("I recommend C because you like comedies")
    assert result.ranking == ids("C") and result.valid
    assert parse("The answer is D.").ranking == ids("D")
    # "I, A" in a clear list are labels.
    assert parse("I think C, A, B").ranking == ids("C", "A", "B")


# --- label formats -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "C, A, B",
        "C > A > B",
        "C\nA\nB",
        "1. C\n2. A\n3. B",
        "1) C\n2) A\n3) B",
        "- C\n- A\n- B",
        "(C) (A) (B)",
        "[C], [A], [B]",
        "C.\nA.\nB.",
        "Answer: C, A, B",
        "Ranking: C -> A -> B",
        "**C**\n**A**\n**B**",
        "C, A, and B",
        "['C', 'A', 'B']",
        "C; A; B",
    ],
)
def test_label_list_formats(text):
    result = parse(text)
    assert result.ranking == ids("C", "A", "B")
    assert result.valid is True
    assert errs(result) == {"missing": 3}


@pytest.mark.parametrize("text", ["(C)", "[C]", "C.", "Answer: C", "answer: C", "Option C", "Candidate C"])
def test_single_label_formats(text):
    result = parse(text)
    assert result.ranking == ids("C")
    assert result.valid is True
    assert errs(result) == {"missing": 5}


def test_contractions_and_abbreviations_are_not_labels():
    assert parse("I'm going with U.S. politics, A-ha!").errors["invalid"] == 1


def test_numeric_labels_and_list_markers():
    cands = [CandidateView(f"n{k}", str(k + 1), f"Movie number {k}") for k in range(12)]
    result = parse_ranking("1. 3\n2. 11\n3. 1", cands)
    assert result.ranking[:3] == ["n2", "n10", "n0"]
    assert result.valid and result.errors["missing"] == 9
    # "13" has the shape of a label but there is no 13th candidate.
    result = parse_ranking("13, 2", cands)
    assert result.ranking[0] == "n1" and result.errors["out_of_candidate"] == 1 and not result.valid


# --- positions and titles ------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["Item 3", "Candidate 3", "item #3", "#3", "Option 3"])
def test_positions_are_one_based(text):
    result = parse(text)
    assert result.ranking == ids("C")
    assert result.valid


def test_position_beyond_list_is_out_of_candidate():
    result = parse("Item 9, Item 2")
    assert result.ranking == ids("B")
    assert errs(result) == {"out_of_candidate": 1, "missing": 5}
    assert result.valid is False  # the first recognised mention is not a candidate


@pytest.mark.parametrize(
    "text",
    [
        "Heat (1995)\nToy Story (1995)",
        "Heat\nToy Story",
        "HEAT (1995), TOY STORY",  # exact title with year matches in any case
        "1. Heat - a thriller\n2. toy story - fun",
    ],
)
def test_titles(text):
    result = parse(text)
    assert result.ranking == ids("C", "A")
    assert result.valid


def test_title_article_and_short_titles():
    assert parse("The American President").ranking == ids("D")
    assert parse("American President, The").ranking == ids("D")
    # "Up" is too short to match without its year (it would hit every "up" in prose).
    assert parse("Let me sum up: Up (2009)").ranking == ids("E")
    assert parse("Let me sum up").errors["invalid"] == 1
    # 3-5 character titles match only with their case: "heat" in prose is not Heat.
    assert parse("the heat of summer").errors["invalid"] == 1


def test_fuzzy_titles_with_cutoff():
    result = parse("1. Toy Stroy (1995)\n2. Jumanjii")
    assert result.ranking == ids("A", "B")
    assert result.valid
    assert parsing.FUZZY_CUTOFF == 0.85
    # Too far from any title: nothing recognised.
    assert parse("1. Tay Starry Nights").errors["invalid"] == 1


def test_longest_title_wins_and_history_counted():
    # "Toy Story 2" is a history title; it must not be read as the candidate "Toy Story".
    result = parse("Toy Story 2 (1999) was great, so: Heat")
    assert result.ranking == ids("C")
    assert errs(result) == {"from_history": 1, "missing": 5}
    assert result.valid is False  # first mention is a history title


def test_catalogue_title_not_candidate_is_out_of_candidate():
    result = parse("Grumpier Old Men, Heat (1986), Sabrina")
    assert result.ranking == ids("F")
    assert errs(result) == {"out_of_candidate": 2, "missing": 5}
    assert result.matched == ["Grumpier Old Men", "Heat (1986)", "Sabrina"]


def test_label_and_title_of_same_candidate_are_one_mention():
    result = parse("1. C: Heat (1995) - because you liked Casino\n2. (A) Toy Story")
    assert result.ranking == ids("C", "A")
    assert errs(result) == {"from_history": 1, "missing": 4}
    assert result.matched == ["C Heat (1995)", "Casino", "A Toy Story"]


# --- counters ------------------------------------------------------------------------------------------------


def test_duplicates_and_out_of_candidate_labels():
    result = parse("C, A, C, Z, A, B")
    assert result.ranking == ids("C", "A", "B")
    assert errs(result) == {"duplicate": 2, "out_of_candidate": 1, "missing": 3}
    assert result.valid is True
    assert result.matched == ["C", "A", "C", "Z", "A", "B"]


def test_valid_only_when_first_mention_is_a_candidate():
    result = parse("Z, C, A")
    assert result.ranking == ids("C", "A")
    assert result.valid is False
    assert result.errors["out_of_candidate"] == 1
    assert result.errors["invalid"] == 0


def test_out_of_candidate_with_twenty_candidates():
    cands = [CandidateView(f"x{k}", chr(65 + k), f"Film {k}") for k in range(20)]  # labels A-T
    result = parse_ranking("Z, U, T", cands)
    assert result.ranking[0] == "x19"
    assert result.errors["out_of_candidate"] == 2


def test_missing_candidates_appended_in_display_order():
    cands = [CandidateView(item, label, "") for item, label in [("z", "A"), ("y", "B"), ("x", "C"), ("w", "D")]]
    result = parse_ranking("D, B", cands)
    # Mentioned first (in mention order), then the rest in display order, not sorted by id.
    assert result.ranking == ["w", "y", "z", "x"]
    assert result.errors["missing"] == 2


# --- JSON ----------------------------------------------------------------------------------------------------


def test_json_ranking():
    result = parse('{"ranking": ["C", "A", "B"]}')
    assert result.ranking == ids("C", "A", "B")
    assert errs(result) == {"missing": 3}


def test_json_lowercase_titles_and_unknown_elements():
    result = parse('```json\n{"ranking": ["c", "Toy Story", "Jumanjii", "Some Unknown Film"]}\n```')
    assert result.ranking == ids("C", "A", "B")
    assert errs(result) == {"out_of_candidate": 1, "missing": 3}


@pytest.mark.parametrize("text", ['{"ranking": ["C", "A", "B', '{"ranking": ["C", "A", "B"', '["C", "A", "B",'])
def test_json_cut_off_at_max_tokens(text):
    result = parse(text)
    assert result.ranking == ids("C", "A", "B")
    assert result.valid


def test_json_integer_positions():
    assert parse('{"ranking": [3, 1]}').ranking == ids("C", "A")


# --- Unicode look-alikes, long outputs -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "\u0421, \u0410, \u0412",  # Cyrillic Es, A, Ve
        "\u0397\u200b, \u0391, \u0392".replace("\u0397", "C"),  # zero-width space + Greek Alpha, Beta
        "\uff23, \uff21, \uff22",  # fullwidth C, A, B
        "\U0001d402, \U0001d400, \U0001d401",  # mathematical bold C, A, B
        "\u202eC, A, B\u202c",  # RTL override around the list
    ],
)
def test_unicode_look_alikes(text):
    result = parse(text)
    assert result.ranking == ids("C", "A", "B")
    assert result.valid


def test_ten_thousand_characters_scans_a_bounded_prefix():
    assert MAX_SCAN_CHARS == 4000
    text = "C, A\n" + "blah " * 2000 + "\nB"
    assert len(text) > 10_000
    result = parse(text)
    # "B" lies beyond the scanned prefix, so it is missing (appended in display order), not read.
    assert result.ranking == ids("C", "A")
    assert result.errors["missing"] == 4
    long_garbage = "".join(random.Random(1).choice(string.printable) for _ in range(10_000))
    assert_permutation(parse(long_garbage))


def test_long_title_list_with_real_sized_catalogue():
    catalogue = [f"Film Number {k} (19{k % 100:02d})" for k in range(5000)] + CATALOGUE
    text = "Heat\n" + "\n".join(f"{k}. Film Number {k} (19{k % 100:02d})" for k in range(300))
    result = parse_ranking(text, CANDS, HISTORY, catalogue)
    assert result.ranking == ids("C") and result.valid
    # Every catalogue title within the 4,000-char prefix is an out-of-candidate mention.
    scanned = text[:MAX_SCAN_CHARS].count("Film Number")
    assert result.errors["out_of_candidate"] == scanned


# --- robustness ----------------------------------------------------------------------------------------------


def test_random_garbage_is_always_a_permutation(caplog):
    rng = random.Random(1234)
    alphabet = string.ascii_letters + string.digits + string.punctuation + " \n\t" + "АВСΑΒ\uff21\u200b\u00e9"
    pieces = ["C", "A", "Z", "Item 4", "#9", "Heat", "Casino", '{"ranking": [', '"B"', "Toy Story", ", ", " > "]
    for _ in range(200):
        n = rng.randrange(0, 300)
        text = "".join(rng.choice(pieces) if rng.random() < 0.2 else rng.choice(alphabet) for _ in range(n))
        result = parse(text)
        assert_permutation(result)
        assert set(result.errors) == {"invalid", "duplicate", "missing", "out_of_candidate", "from_history"}
        assert result.errors["invalid"] == (1 if result.errors["missing"] == len(CANDS) else 0)
        assert not (result.valid and result.errors["invalid"])
    # No input took the exception fallback: that path is for bugs, and garbage must not find one.
    assert "parse_ranking failed" not in caplog.text


def test_internal_error_falls_back_to_candidate_order(monkeypatch, caplog):
    def boom(*args, **kwargs):
        raise RuntimeError("injected parser bug")

    monkeypatch.setattr(parsing, "_scan", boom)
    with caplog.at_level(logging.WARNING, logger="mmrec_gen.rank.parsing"):
        result = parse("C, A, B")
    assert result.ranking == IDS
    assert result.valid is False
    assert result.errors == {"invalid": 1, "duplicate": 0, "missing": 6, "out_of_candidate": 0, "from_history": 0}
    assert "parse_ranking failed" in caplog.text


def test_no_candidates():
    result = parse_ranking("C, A", [])
    assert result.ranking == [] and result.valid is False


def test_parse_ignores_the_target(tmp_path):
    """R2: the parser cannot see the target; rows that differ only in target parse identically."""
    rows = [
        {"user_id": "u1", "candidates": IDS, "target": target, "raw_output": "C, A\nbecause you liked Casino"}
        for target in IDS
    ]
    results = []
    for row in rows:
        by_id = {c.item_id: c for c in CANDS}
        cands = [by_id[i] for i in row["candidates"]]
        results.append(parse_ranking(row["raw_output"], cands, HISTORY, CATALOGUE))
    first = dataclasses.asdict(results[0])
    assert all(dataclasses.asdict(r) == first for r in results[1:])
    assert repr(results[0]) == repr(results[-1])
    assert results[0].ranking == ids("C", "A")
