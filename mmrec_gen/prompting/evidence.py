"""Evidence for an explanation: the history items most related to a recommended item, and the answer scaffold.

`select_evidence` is shared by inference (`mmrec explain`: the prompt lists the evidence and the cited title is
chosen among the evidence titles) and training (`mmrec train sft --target explanation`: the target cites the best
evidence item), so both ground an explanation the same way. It lives in the prompt layer because rank/ and train/
are peers that never import each other.

Relatedness of a history item h to the recommended item r, compared in this order (larger first):
1. the number of values of the list-valued fields (`genres`, `tags`, `categories`; "A|B" or "A, B") h shares
   with r;
2. the number of content words (4+ letters, lowercased) that h's other text fields and title share with r's;
3. recency (a later history position first).
Items sharing nothing at all are evidence only when no item shares anything: then the most recent ones are, with
`shared` empty. The recommended item itself is never evidence.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from mmrec_gen.data.schema import Item

# Evidence items listed (and citation choices) and the explanation's token budget: the defaults of `mmrec explain`,
# which `mmrec train sft --target explanation` trains with, so its prompts equal the inference prompts.
NUM_EVIDENCE = 3
EXPLANATION_MAX_NEW_TOKENS = 64
# List-valued item fields an explanation may cite ("Comedy|Drama" in MovieLens, "Comedy, Drama" in generic data).
LIST_FIELDS = ("genres", "tags", "categories")
_CONTENT_WORD = re.compile(r"[^\W\d_]{4,}")
_YEAR = re.compile(r"\(\s*\d{4}\s*\)")


@dataclass(frozen=True)
class Evidence:
    """A history item given as evidence: `shared` holds the list-field values it shares with the recommendation
    (in the recommended item's field order), `position` its index in the history (oldest first)."""

    item: Item
    shared: tuple[str, ...]
    position: int


def field_values(item: Item, key: str) -> list[str]:
    """The values of a list-valued field, in order ('Action|Comedy' or 'Action, Comedy' -> ['Action', 'Comedy'])."""
    values = [v.strip() for v in re.split(r"[|,]", item.fields.get(key, "") or "")]
    return [v for v in values if v and v.lower() not in ("(no genres listed)", "unknown")]


def shared_values(a: Item, b: Item) -> tuple[str, ...]:
    """The list-field values of `a` that `b` has too, in `a`'s order."""
    out: list[str] = []
    for key in LIST_FIELDS:
        theirs = set(field_values(b, key))
        out.extend(v for v in field_values(a, key) if v in theirs and v not in out)
    return tuple(out)


def _content_words(item: Item) -> set[str]:
    text = " ".join([_YEAR.sub(" ", item.title), *(v for k, v in item.fields.items() if k not in LIST_FIELDS)])
    return {w.lower() for w in _CONTENT_WORD.findall(text)}


def select_evidence(history: Sequence[Item], item: Item, k: int = NUM_EVIDENCE) -> list[Evidence]:
    """The `k` history items (oldest first in `history`) most related to `item`, most related first."""
    if k < 1:
        raise ValueError(f"the number of evidence items must be >= 1, got {k}")
    target_words = _content_words(item)
    scored = []
    for position, h in enumerate(history):
        if h.item_id == item.item_id:
            continue
        shared = shared_values(item, h)
        overlap = len(target_words & _content_words(h))
        scored.append(((len(shared), overlap, position), Evidence(h, shared, position)))
    related = [s for s in scored if s[0][0] or s[0][1]]
    pool = related or scored
    pool.sort(key=lambda s: s[0], reverse=True)
    picked: list[Evidence] = []
    titles: set[str] = set()
    for _, ev in pool:
        if ev.item.title not in titles:  # a title repeated in the history (a re-watch) is one option
            titles.add(ev.item.title)
            picked.append(ev)
        if len(picked) == k:
            break
    return picked


@lru_cache(maxsize=1)
def _answer_macros():
    from mmrec_gen.prompting.templates import environment

    return environment().get_template("_explain_answer.jinja").module


def answer_lead() -> str:
    """The text every grounded explanation starts with; the cited evidence title follows it."""
    return str(_answer_macros().lead())


def answer_bridge() -> str:
    """The text between the cited title and the generated rest of the explanation."""
    return str(_answer_macros().bridge())


def answer_shared_clause(shared: Sequence[str]) -> str:
    """What a cited evidence item shares with the recommendation (" which is also Comedy and Drama,"; "" when
    nothing), forced after the bridge by `mmrec explain` and the start of every training target's reason."""
    return str(_answer_macros().shared_clause(list(shared)))


def answer_stop() -> tuple[str, ...]:
    """Where generating the rest of an explanation stops (a line break; EOS too); `first_sentence` then cuts it."""
    return tuple(s for s in str(_answer_macros().stop()).split("|") if s)


# A full stop that ends a sentence: followed by a space or the end, and not closing an abbreviation (a single
# letter as in "a.k.a." or "J. R. R.", or a short title or name part: "Kill Bill: Vol. 1", "Monsters, Inc.").
_ABBREVIATIONS = ("vs", "Vol", "Mr", "Mrs", "Ms", "Dr", "St", "No", "Inc", "Jr", "Sr")
_SENTENCE_END = re.compile(r"(?<!\b\w)" + "".join(rf"(?<!\b{a})" for a in _ABBREVIATIONS) + r"\.(?=\s|$)")


def first_sentence(text: str) -> str:
    """`text` up to and including its first full stop that ends a sentence ("... (a.k.a. Shrek: The Final
    Chapter) (2010) too." is one sentence); "" when there is none: a text the token budget cut, in practice a
    repetition loop ending mid-word or mid-title."""
    end = _SENTENCE_END.search(text)
    return text[: end.end()] if end else ""


def answer_reason(item_title: str, shared: Sequence[str]) -> str:
    """The rest of a training target (`mmrec train sft --target explanation`): what the cited item shares with the
    recommendation, from data only."""
    return str(_answer_macros().reason(item_title, list(shared)))
