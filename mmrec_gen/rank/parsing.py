"""Parse free-text LLM output into a full ranking of the candidates, with error counters (docs/RELIABILITY.md R1, R2).

`parse_ranking` never raises and always returns a permutation of the candidates. It does not see the target
(R2): its output depends only on the text, the candidates and the title lists.

How the output is read (in this order):

1. **Bounded work.** Only the first `MAX_SCAN_CHARS` (4,000) characters are scanned; anything later is ignored.
2. **Normalisation.** NFKC (fullwidth and styled letters become ASCII), Cyrillic/Greek capitals that look like
   Latin A-Z are mapped to them, and zero-width / bidi / control characters are removed. Titles are normalised
   the same way, so matching stays consistent.
3. **Titles** (candidates, then history, then catalogue) are matched on word boundaries, as given, without a
   trailing "(year)", and with MovieLens' "X, The" also as "The X". A variant of 6+ characters matches
   case-insensitively; 3-5 characters only with its exact case ("Heat", not "heat"); shorter variants ("Up",
   "M") only with their year. Overlaps keep the longest match (then candidate > history > catalogue).
4. **Positions**: "Item 3", "Candidate 3", "Option 3", "#3" mean the 3rd candidate in display order (1-based);
   a number beyond the list is out-of-candidate.
5. **Labels.** A token shaped like a label (A-Z up to the longest label's length when labels are letters,
   digits when they are numbers, the exact labels otherwise) counts only in a label-like position, so the "I"
   and "A" of "I think A is best" are never labels:
   - inside a clear list: two or more label tokens joined by "," ">" ";" "|" "->" "=>" (optionally "and"),
     e.g. "C, A, B" or "C > A > B" or "["C", "A"]";
   - or after a strong cue word ("answer", "option", "choice", "candidate", "item", "label", "letter", "pick",
     "select", "choose", "recommend", optionally + "is"/":"), whatever follows: "I recommend C because ...";
   - or delimited on both sides: left = start of a line (after a list marker such as "1." "-" "*"), one of
     ``, ; : ( [ { | / = > " ' *``, a sentence end followed by a space, or a weak cue ("is", "then", "and",
     "or", "top", "ranking", ...); right = end of line/text or one of ``, ; : . ! ) ] } | / > < = " ' * -``
     (a "." "'" or "-" only when not followed by a letter, so "I'm", "U.S." and "A-ha" are not labels).
6. **JSON** string elements (`{"ranking": ["C", "A"]}`, also when cut off at max_tokens) and list lines with
   no recognised mention are resolved as a whole: label (any case in JSON), a JSON integer as a position
   (unless labels are numbers), then a fuzzy title via difflib with cutoff `FUZZY_CUTOFF` (0.85, on lower-cased
   titles without year) against candidate and history titles. An unresolved JSON element counts as out-of-candidate.
7. A label and a title (or position) for the same candidate next to each other on one line ("C: Toy Story")
   are one mention.

Counters: `duplicate` = a candidate mentioned again; `out_of_candidate` = a label-shaped token that is no
candidate's label, a position beyond the list, a catalogue title that is no candidate's, or an unresolved JSON
element; `from_history` = a history title that is not a candidate; `invalid` = 1 when nothing maps to a
candidate; `missing` = candidates never mentioned. `valid` is True iff the first recognised mention is a
candidate. Missing candidates are appended after the mentioned ones in candidate display order.
"""

from __future__ import annotations

import difflib
import functools
import json
import logging
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field

from mmrec_gen.rank.titles import front_article, strip_year

logger = logging.getLogger(__name__)

MAX_SCAN_CHARS = 4000
FUZZY_CUTOFF = 0.85
_MAX_FUZZY_ATOMS = 60  # bound on difflib work per output
_MAX_ATOM_CHARS = 150
ERROR_KEYS = ("invalid", "duplicate", "missing", "out_of_candidate", "from_history")

# Letters that render like Latin capitals (R1 look-alikes); fullwidth/styled forms are handled by NFKC.
_CONFUSABLES = str.maketrans(
    {
        **dict(zip("АВСЕНІЈКМОРЅТХУ", "ABCEHIJKMOPSTXY", strict=True)),  # Cyrillic
        **dict(zip("ΑΒΕΖΗΙΚΜΝΟΡΤΥΧ", "ABEZHIKMNOPTYX", strict=True)),  # Greek
    }
)
_INVISIBLE = re.compile("[\u00ad\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff\x00-\x08\x0b-\x1f\x7f]")
_MASK = "\x00"  # replaces matched spans so later passes do not re-read them; NUL is removed from input first
_WORD = re.compile(r"[^\W_]+")
_ANY_YEAR = re.compile(r"\(\s*\d{4}\s*\)")
_LIST_MARKER = re.compile(r"^[ \t]*(?:(?:\d{1,3}|[ivx]{1,4})[.)]|[-*•+])[ \t]+(?=\S)", re.MULTILINE)
_POSITION = re.compile(
    r"(?i)\b(?:item|candidate|option|movie|film|choice|no\.)[ \t]*#?[ \t]*(\d{1,4})\b"
    r"|#[ \t]*(\d{1,4})\b(?![ \t]+(?:pick|choice|recommendation|spot|rank|favou?rite))"
)
_LEFT_DELIMS = set(",;:([{|/=>\"'*")
_RIGHT_DELIMS = set(",;:.!)]}|/><=\"'*-")
_MERGE_BREAK = re.compile(r"[\n,;>|]")  # a list delimiter between two mentions keeps them apart
_CUE_TAIL = r"[ \t]*(?:is|are|would be|[:=-])?[ \t]*$"
_STRONG_CUE = re.compile(
    r"(?i)\b(?:answer|option|choice|candidate|item|label|letter|pick|picks|select|choose|recommend|"
    r"recommendation|recommended)" + _CUE_TAIL
)
_WEAK_CUE = re.compile(r"(?i)\b(?:is|ranking|ranked|top|first|second|third|then|and|or)" + _CUE_TAIL)
_LINE_LEAD = re.compile(r"[ \t]*(?:(?:\d{1,3}|[ivx]{1,4})[.)]|[-*\u2022+])?[ \t*>\"'(\[]*")


@dataclass(frozen=True)
class CandidateView:
    """What the parser knows about one candidate: its id, the label shown in the prompt and its title."""

    item_id: str
    label: str
    title: str


@dataclass
class ParseResult:
    """`ranking` is always a full permutation of the candidate ids; `matched` lists the recognised mentions'
    text (candidates and not), in reading order, after merging label+title pairs."""

    ranking: list[str]
    valid: bool
    errors: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ERROR_KEYS, 0))
    matched: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Mention:
    start: int
    end: int
    kind: str  # "label", "position", "title", "atom"
    category: str  # "candidate", "out_of_candidate", "history"
    item_id: str | None
    text: str


def normalize_text(text: str) -> str:
    """NFKC + look-alike capitals mapped to Latin + invisible/control characters removed."""
    return _INVISIBLE.sub("", unicodedata.normalize("NFKC", text).translate(_CONFUSABLES))


def _title_variants(title: str) -> set[str]:
    base = normalize_text(title).strip()
    variants = {base}
    variants.add(strip_year(base))
    variants |= {front_article(v) for v in variants}
    return {v for v in variants if len(v) >= 3}


def _fuzzy_key(text: str) -> str:
    return " ".join(_WORD.findall(_ANY_YEAR.sub(" ", text).lower()))


# An index entry: (variant, offset of its first word, case_sensitive, priority, category, item_id).
_Entry = tuple[str, int, bool, int, str, "str | None"]


def _index_titles(titles: Sequence[tuple[str, str | None]], priority: int, category: str) -> dict[str, list[_Entry]]:
    index: dict[str, list[_Entry]] = {}
    for title, item_id in titles:
        if not title:
            continue
        for variant in _title_variants(title):
            first = _WORD.search(variant)
            if first is None:
                continue
            case_sensitive = len(variant) < 6
            key_variant = variant if case_sensitive else variant.lower()
            index.setdefault(first.group().lower(), []).append(
                (key_variant, first.start(), case_sensitive, priority, category, item_id)
            )
    return index


@functools.lru_cache(maxsize=4)
def _catalogue_index(titles: tuple[str, ...]) -> dict[str, list[_Entry]]:
    # Cached: the same catalogue is passed for every user of a run.
    return _index_titles([(t, None) for t in titles], 2, "out_of_candidate")


def _find_titles(text: str, indexes: Sequence[dict[str, list[_Entry]]]) -> list[_Mention]:
    lower = text.lower()
    found: list[tuple[int, int, int, str, str | None]] = []
    for word in _WORD.finditer(lower):
        key = word.group()
        for index in indexes:
            for variant, offset, case_sensitive, priority, category, item_id in index.get(key, ()):
                start = word.start() - offset
                if start < 0:
                    continue
                haystack = text if case_sensitive else lower
                if not haystack.startswith(variant, start):
                    continue
                end = start + len(variant)
                if start > 0 and variant[0].isalnum() and text[start - 1].isalnum():
                    continue
                if end < len(text) and variant[-1].isalnum() and text[end].isalnum():
                    continue
                found.append((start, end, priority, category, item_id))
    # Longest match wins, then candidate > history > catalogue; a match overlapping a kept one is dropped.
    found.sort(key=lambda f: (-(f[1] - f[0]), f[2], f[0]))
    mentions: list[_Mention] = []
    for start, end, _, category, item_id in found:
        if any(m.start < end and start < m.end for m in mentions):
            continue
        mentions.append(_Mention(start, end, "title", category, item_id, text[start:end]))
    return sorted(mentions, key=lambda m: m.start)


class _Labels:
    """Label lookup: shape of a label-like token, and label -> item id."""

    def __init__(self, candidates: Sequence[CandidateView]) -> None:
        self.by_label = {normalize_text(c.label).strip(): c.item_id for c in candidates}
        self.by_label_ci = {label.lower(): item for label, item in self.by_label.items()}
        labels = [label for label in self.by_label if label]
        longest = max((len(label) for label in labels), default=1)
        self.numeric = bool(labels) and all(label.isdigit() for label in labels)
        if labels and all(label.isascii() and label.isalpha() and label.isupper() for label in labels):
            self.token = rf"[A-Z]{{1,{longest}}}"
        elif self.numeric:
            self.token = rf"\d{{1,{longest}}}"
        else:
            self.token = "|".join(re.escape(label) for label in sorted(labels, key=len, reverse=True)) or "(?!)"
        self.single = re.compile(rf"(?<![^\W_])(?:{self.token})(?![^\W_])")
        wrapped = rf"[(\[\"'*]*(?:{self.token})[)\]\"'*]*"
        joiner = r"[ \t]*(?:,|>|;|\||->|=>|→)[ \t]*(?:and[ \t]+|or[ \t]+)?"
        self.run = re.compile(rf"(?<![^\W_]){wrapped}(?:{joiner}{wrapped})+(?![^\W_])")


def _label_mention(labels: _Labels, start: int, end: int, token: str, kind: str = "label") -> _Mention:
    item_id = labels.by_label.get(token)
    category = "candidate" if item_id is not None else "out_of_candidate"
    return _Mention(start, end, kind, category, item_id, token)


def _left_kind(text: str, start: int) -> str | None:
    """'strong' after a cue word like "answer"/"pick", 'delim' after a delimiter or line start, else None."""
    line_start = text.rfind("\n", 0, start) + 1
    before = text[line_start:start]
    if _LINE_LEAD.fullmatch(before):
        return "delim"
    stripped = before.rstrip(" \t")
    tail = stripped[-40:]
    if _STRONG_CUE.search(tail):
        return "strong"
    last = stripped[-1]
    if last in _LEFT_DELIMS:
        return "delim"
    if last in ".!?" and len(stripped) < len(before):  # "... best. C" but not the "S" of "U.S"
        return "delim"
    if _WEAK_CUE.search(tail):
        return "delim"
    return None


def _right_ok(text: str, end: int) -> bool:
    rest = text[end : end + 40]
    stripped = rest.lstrip(" \t")
    if not stripped or stripped[0] == "\n":
        return True
    ch = stripped[0]
    if ch not in _RIGHT_DELIMS:
        return False
    if ch in ".'-" and len(stripped) > 1 and stripped[1].isalpha():
        return False
    return True


def _find_labels(text: str, labels: _Labels) -> list[_Mention]:
    mentions: list[_Mention] = []
    taken = bytearray(len(text))
    for run in labels.run.finditer(text):
        for tok in labels.single.finditer(text, run.start(), run.end()):
            mentions.append(_label_mention(labels, tok.start(), tok.end(), tok.group()))
        taken[run.start() : run.end()] = b"\x01" * (run.end() - run.start())
    for tok in labels.single.finditer(text):
        if taken[tok.start()]:
            continue
        left = _left_kind(text, tok.start())
        # After a strong cue ("I recommend C because ...") the right side needs no delimiter.
        if left == "strong" or (left == "delim" and _right_ok(text, tok.end())):
            mentions.append(_label_mention(labels, tok.start(), tok.end(), tok.group()))
    return mentions


def _position_mention(start: int, end: int, number: int, candidates: Sequence[CandidateView], text: str) -> _Mention:
    if 1 <= number <= len(candidates):
        return _Mention(start, end, "position", "candidate", candidates[number - 1].item_id, text)
    return _Mention(start, end, "position", "out_of_candidate", None, text)


class _Resolver:
    """Resolves a whole atom (a JSON element or a list line) when the span scan found nothing in it."""

    def __init__(self, candidates: Sequence[CandidateView], labels: _Labels, history: Sequence[str]) -> None:
        self.candidates = candidates
        self.labels = labels
        self.fuzzy: dict[str, tuple[str, str | None]] = {}
        for title in history:
            if title:
                self.fuzzy.setdefault(_fuzzy_key(normalize_text(title)), ("history", None))
        for c in candidates:  # candidates override history titles with the same key
            if c.title:
                self.fuzzy[_fuzzy_key(normalize_text(c.title))] = ("candidate", c.item_id)
        self.fuzzy.pop("", None)

    def resolve(self, atom: str, start: int, end: int, *, strict_label: bool) -> _Mention | None:
        core = atom.strip().strip("\"'*()[]{}.,;: \t")
        if not core:
            return None
        item_id = self.labels.by_label_ci.get(core.lower()) if strict_label else self.labels.by_label.get(core)
        if item_id is not None:
            return _Mention(start, end, "label", "candidate", item_id, core)
        if strict_label and core.isdigit() and not self.labels.numeric:
            return _position_mention(start, end, int(core), self.candidates, core)
        if len(core) <= _MAX_ATOM_CHARS:
            key = _fuzzy_key(atom)
            match = difflib.get_close_matches(key, list(self.fuzzy), n=1, cutoff=FUZZY_CUTOFF) if key else []
            if match:
                category, item = self.fuzzy[match[0]]
                return _Mention(start, end, "title", category, item, atom.strip())
        if strict_label and re.fullmatch(self.labels.token, core):
            return _Mention(start, end, "label", "out_of_candidate", None, core)
        return None


def _json_atoms(text: str) -> list[tuple[int, int, str]]:
    """String / integer elements of the first JSON array in the output (tolerates a cut-off array)."""
    key = re.search(r'"(?:ranking|rank|items|order|recommendations?)"\s*:\s*\[', text, re.IGNORECASE)
    if key is None:
        key = re.match(r"\s*(?:```(?:json)?\s*)?\[", text)
    if key is None:
        return []
    atoms: list[tuple[int, int, str]] = []
    pos = key.end()
    element = re.compile(r'\s*(?:"((?:[^"\\\n]|\\.)*)"?|(-?\d+))\s*(,|\]|$)?')
    while pos < len(text):
        m = element.match(text, pos)
        if m is None or m.end() == pos:
            break
        raw = m.group(1) if m.group(1) is not None else m.group(2)
        if m.group(1) is not None:
            try:
                raw = json.loads(f'"{raw}"')
            except ValueError:
                pass  # a cut-off escape: keep the raw text
        value_start = m.start() + len(m.group(0)) - len(m.group(0).lstrip())
        atoms.append((value_start, m.end(), raw))
        pos = m.end()
        if m.group(3) != ",":
            break
    return atoms


def _scan(text: str, candidates: Sequence[CandidateView], history: Sequence[str], catalogue: Sequence[str]):
    labels = _Labels(candidates)
    history_norm = [normalize_text(t) for t in history]
    indexes = [
        _index_titles([(c.title, c.item_id) for c in candidates], 0, "candidate"),
        _index_titles([(t, None) for t in history_norm], 1, "history"),
    ]
    if catalogue:
        indexes.append(_catalogue_index(tuple(catalogue)))
    mentions = _find_titles(text, indexes)
    masked = list(text)
    for m in mentions:
        masked[m.start : m.end] = _MASK * (m.end - m.start)
    for pm in _POSITION.finditer(text):
        if masked[pm.start()] == _MASK:
            continue
        number = int(pm.group(1) or pm.group(2))
        mentions.append(_position_mention(pm.start(), pm.end(), number, candidates, pm.group()))
        masked[pm.start() : pm.end()] = _MASK * (pm.end() - pm.start())
    masked_text = "".join(masked)
    # List markers ("1. ", "- ") become spaces so numeric labels never read them as labels.
    masked_text = _LIST_MARKER.sub(lambda m: " " * len(m.group()), masked_text)
    mentions.extend(_find_labels(masked_text, labels))

    resolver = _Resolver(candidates, labels, history_norm)
    atoms: list[tuple[int, int, str, bool]] = [(s, e, a, True) for s, e, a in _json_atoms(text)]
    if not atoms:
        line_start = 0
        for line in text.split("\n"):
            marker = _LIST_MARKER.match(line)
            offset = marker.end() if marker else 0
            atoms.append((line_start + offset, line_start + len(line), line[offset:], False))
            line_start += len(line) + 1
    for start, end, atom, is_json in atoms[:_MAX_FUZZY_ATOMS]:
        if any(m.start < end and start < m.end for m in mentions):
            continue
        found = resolver.resolve(atom, start, end, strict_label=is_json)
        if found is not None:
            mentions.append(found)
        elif is_json and atom.strip():
            mentions.append(_Mention(start, end, "atom", "out_of_candidate", None, atom.strip()))
    return _merge(sorted(mentions, key=lambda m: (m.start, m.end)), text)


def _merge(mentions: list[_Mention], text: str) -> list[_Mention]:
    """Fold a label/position and a title of the same candidate that sit next to each other on one line."""
    merged: list[_Mention] = []
    for m in mentions:
        prev = merged[-1] if merged else None
        if (
            prev is not None
            and m.category == "candidate"
            and prev.item_id == m.item_id
            and prev.category == "candidate"
            and prev.kind != "merged"
            and (prev.kind == "title") != (m.kind == "title")
            and not _MERGE_BREAK.search(text[prev.end : m.start])
        ):
            merged[-1] = _Mention(prev.start, m.end, "merged", "candidate", m.item_id, f"{prev.text} {m.text}")
            continue
        merged.append(m)
    return merged


def parse_ranking(
    text: str,
    candidates: Sequence[CandidateView],
    history_titles: Sequence[str] = (),
    catalogue_titles: Sequence[str] = (),
) -> ParseResult:
    """Read a ranking of `candidates` out of LLM output `text` (rules in the module docstring). Never raises."""
    order = [c.item_id for c in candidates]
    try:
        if isinstance(text, bytes | bytearray):
            raw = bytes(text).decode("utf-8", errors="replace")
        else:
            raw = text if isinstance(text, str) else ("" if text is None else str(text))
        norm = normalize_text(raw[:MAX_SCAN_CHARS]).replace(_MASK, "")
        mentions = _scan(norm, candidates, history_titles, catalogue_titles)
        errors = dict.fromkeys(ERROR_KEYS, 0)
        ranking: list[str] = []
        seen: set[str] = set()
        known = set(order)
        for m in mentions:
            if m.category == "candidate" and m.item_id in known:
                if m.item_id in seen:
                    errors["duplicate"] += 1
                else:
                    seen.add(m.item_id)
                    ranking.append(m.item_id)
            elif m.category == "history":
                errors["from_history"] += 1
            else:
                errors["out_of_candidate"] += 1
        if not ranking:
            errors["invalid"] = 1
        missing = [item for item in order if item not in seen]
        errors["missing"] = len(missing)
        valid = bool(ranking) and mentions[0].category == "candidate"
        return ParseResult(ranking + missing, valid, errors, [m.text for m in mentions])
    except Exception:  # R1: a parser bug must never take a job down; the row is marked invalid instead
        logger.warning("parse_ranking failed on output %r; using candidate order", str(text)[:200], exc_info=True)
        errors = dict.fromkeys(ERROR_KEYS, 0)
        errors.update(invalid=1, missing=len(order))
        return ParseResult(list(order), False, errors, [])
