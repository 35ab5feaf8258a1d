"""Candidate labels (A, B, C, ...) and their token ids (docs/RELIABILITY.md R11).

The rank templates list candidates as `A. Title`, `B. Title`, ... and the assistant answer starts with a label.
Score mode reads the next-token logits right after the assistant prefix, so each label must be exactly one token
of the loaded tokenizer, and the ids must be distinct; `label_token_ids` checks both and raises otherwise.
"""

from __future__ import annotations

import string
from collections.abc import Sequence

from mmrec_gen.prompting.sanitize import text_tokenizer

MAX_LABELS = len(string.ascii_uppercase)


def candidate_labels(n: int) -> list[str]:
    """The first `n` capital letters; `n` must be between 0 and 26."""
    if n < 0:
        raise ValueError(f"number of candidates must be >= 0, got {n}")
    if n > MAX_LABELS:
        raise ValueError(
            f"{n} candidates but only {MAX_LABELS} single-letter labels (A-Z) exist; "
            f"use at most {MAX_LABELS} candidates (for example --num-candidates 20)"
        )
    return list(string.ascii_uppercase[:n])


def _tokenizer_name(tokenizer) -> str:
    name = getattr(tokenizer, "name_or_path", "") or ""
    return f"{type(tokenizer).__name__}({name!r})" if name else type(tokenizer).__name__


def label_token_ids(tokenizer, labels: Sequence[str], *, prefix: str | None = None) -> list[int]:
    """Token id of each label as the first token of the assistant answer.

    Each label must encode (without special tokens) to exactly one token, and the ids must be distinct; otherwise
    ValueError names the label, its tokens and the tokenizer. When `prefix` is given (a rendered prompt ending
    with the assistant prefix), it is also checked that `prefix + label` tokenizes as `prefix` followed by that
    one id, i.e. the tokenizer does not merge the label with the end of the prompt.
    """
    tok = text_tokenizer(tokenizer)
    ids: list[int] = []
    for label in labels:
        encoded = tok.encode(label, add_special_tokens=False)
        if len(encoded) != 1:
            pieces = tok.convert_ids_to_tokens(encoded)
            raise ValueError(
                f"label {label!r} is {len(encoded)} tokens {pieces} (ids {encoded}) in tokenizer "
                f"{_tokenizer_name(tok)}; score mode needs every label to be a single token. "
                "Use single-letter labels A-Z or a tokenizer that encodes the label as one token."
            )
        ids.append(encoded[0])
    if len(set(ids)) != len(ids):
        dupes = {lab: i for lab, i in zip(labels, ids, strict=True) if ids.count(i) > 1}
        raise ValueError(f"labels map to the same token id in tokenizer {_tokenizer_name(tok)}: {dupes}")
    if prefix is not None:
        base = tok(prefix, add_special_tokens=False)["input_ids"]
        for label, label_id in zip(labels, ids, strict=True):
            joined = tok(prefix + label, add_special_tokens=False)["input_ids"]
            if joined != [*base, label_id]:
                raise ValueError(
                    f"label {label!r} does not tokenize as its own token after the assistant prefix in tokenizer "
                    f"{_tokenizer_name(tok)}: the prompt ends with {tok.convert_ids_to_tokens(base[-3:])} and "
                    f"prompt+label ends with {tok.convert_ids_to_tokens(joined[-3:])}"
                )
    return ids
