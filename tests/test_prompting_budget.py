"""R4: token budget. Oldest history dropped first, candidates and image blocks never cut, truncation recorded."""

from __future__ import annotations

import pytest

from mmrec_gen.data.schema import Item
from mmrec_gen.prompting.render import HistoryEntry, PromptBuilder, PromptTooLongError


def _long_history(n: int, title_chars: int) -> list[HistoryEntry]:
    filler = ("the red forest " * (title_chars // 15 + 1))[:title_chars]
    return [HistoryEntry(Item(f"h{i}", f"Movie {i} {filler}", {"genres": "Action|Drama"}), 4.0) for i in range(n)]


def _used_history_ids(prompt, n_total: int) -> list[int]:
    user = (
        prompt.messages[-1]["content"]
        if isinstance(prompt.messages[-1]["content"], str)
        else "".join(b.get("text", "") for b in prompt.messages[-1]["content"])
    )
    return [i for i in range(n_total) if f". Movie {i} " in user]


def test_10k_history_with_5k_char_titles_fits_and_keeps_the_most_recent(tokenizer):
    history = _long_history(10_000, 5_000)
    cands = [Item(f"c{i}", f"Candidate {i} blue space robot") for i in range(20)]
    builder = PromptBuilder(tokenizer, "rank_listwise", max_model_len=4096, max_new_tokens=64, max_history=10_000)
    prompt = builder.rank("u1", history, cands)
    assert len(prompt.input_ids) <= 4096 - 64
    assert prompt.truncated is True
    assert prompt.n_history_total == 10_000
    assert 0 < prompt.n_history_used < 10_000
    # the kept entries are exactly the most recent ones, oldest first
    kept = _used_history_ids(prompt, 10_000)
    assert kept == list(range(10_000 - prompt.n_history_used, 10_000))
    user = prompt.messages[-1]["content"]
    assert [user.index(f". Movie {i} ") for i in kept] == sorted(user.index(f". Movie {i} ") for i in kept)
    for label, c in zip(prompt.labels, cands, strict=True):
        assert f"\n{label}. {c.title}\n" in user  # every candidate present and whole
    # maximal: one more history entry would not have fitted
    bigger = PromptBuilder(
        tokenizer, "rank_listwise", max_model_len=4096, max_new_tokens=64, max_history=prompt.n_history_used + 1
    )
    assert bigger.rank("u1", history, cands).n_history_used == prompt.n_history_used


def test_titles_are_cut_to_max_text_chars(tokenizer):
    history = _long_history(3, 5_000)
    builder = PromptBuilder(tokenizer, "explain", max_model_len=100_000, max_text_chars=300)
    prompt = builder.explain("u", history, Item("i", "x" * 5_000))
    user = prompt.messages[-1]["content"]
    assert ("x" * 299 + "…") in user and "x" * 300 not in user
    assert prompt.truncated is False and prompt.n_history_used == 3


def test_budget_truncation_flag_vs_max_history_cap(tokenizer):
    history = _long_history(50, 20)
    cands = [Item("c1", "One"), Item("c2", "Two")]
    roomy = PromptBuilder(tokenizer, "rank_listwise", max_model_len=100_000, max_history=10).rank("u", history, cands)
    assert (roomy.n_history_total, roomy.n_history_used, roomy.truncated) == (50, 10, False)
    full_len = len(roomy.input_ids)
    tight = PromptBuilder(tokenizer, "rank_listwise", max_model_len=full_len - 30, max_new_tokens=8, max_history=10)
    prompt = tight.rank("u", history, cands)
    assert prompt.truncated is True and prompt.n_history_used < 10
    assert len(prompt.input_ids) <= full_len - 38
    assert _used_history_ids(prompt, 50) == list(range(50 - prompt.n_history_used, 50))


def test_impossible_budget_raises_prompt_too_long(tokenizer):
    cands = [Item(f"c{i}", f"Candidate {i} with a long title about space robots") for i in range(20)]
    builder = PromptBuilder(tokenizer, "rank_listwise", max_model_len=200, max_new_tokens=8)
    with pytest.raises(PromptTooLongError) as err:
        builder.rank("u9", _long_history(5, 10), cands)
    e = err.value
    assert (e.user_id, e.template_id, e.budget) == ("u9", "rank_listwise", 192)
    assert e.num_tokens > 192
    assert "--max-model-len" in str(e) and "fewer candidates" in str(e)


def test_image_tokens_count_toward_the_budget_and_images_are_never_cut(mm_tokenizer):
    tok = mm_tokenizer
    history = [HistoryEntry(Item(f"h{i}", f"Movie {i}", {}, image=f"/img/h{i}.jpg"), 3.0) for i in range(30)]
    cands = [Item(f"c{i}", f"Candidate {i}", {}, image=f"/img/c{i}.jpg") for i in range(5)]
    budget_kw = dict(max_model_len=1200, max_new_tokens=8, max_history=30, use_images=True)
    prompt = PromptBuilder(tok, "rank_listwise", image_token_count=100, **budget_kw).rank("u", history, cands)
    n_images = len(prompt.images)
    assert len(prompt.input_ids) + 100 * n_images <= 1200 - 8
    assert prompt.truncated is True
    # all candidate images kept; history images only for the kept (most recent) entries
    assert prompt.images[-5:] == [f"/img/c{i}.jpg" for i in range(5)]
    assert prompt.images[:-5] == [f"/img/h{i}.jpg" for i in range(30 - prompt.n_history_used, 30)]
    assert prompt.input_ids.count(tok.convert_tokens_to_ids("<image>")) == n_images
    # without image cost the same budget holds more history
    cheap = PromptBuilder(tok, "rank_listwise", image_token_count=0, **budget_kw).rank("u", history, cands)
    assert cheap.n_history_used > prompt.n_history_used
    with pytest.raises(PromptTooLongError):
        PromptBuilder(tok, "rank_listwise", image_token_count=300, **budget_kw).rank("u", history, cands)


def test_invalid_budget_settings(tokenizer):
    with pytest.raises(ValueError, match="leaves no room"):
        PromptBuilder(tokenizer, "rank_listwise", max_model_len=8, max_new_tokens=8)
