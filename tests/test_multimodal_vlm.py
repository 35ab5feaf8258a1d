"""Vision-language models (issue 13 part 2) on a tiny random LLaVA built in-process (CLIP tower + Llama), saved to a
folder and loaded through `--model FOLDER` like any HF model: images reach the model as processor-expanded
blocks exactly at their slots, it ranks in every mode and explains, training masks image tokens, and LoRA changes
the language model only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mmrec_gen.data.schema import Item
from mmrec_gen.prompting.image_blocks import ImageSelection
from mmrec_gen.prompting.render import HistoryEntry, PromptBuilder

IMAGE_TOKENS = 16  # (32 / 8)^2 patches of the tiny CLIP tower


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    from mmrec_gen.models.tiny import save_tiny_llava

    return save_tiny_llava(tmp_path_factory.mktemp("tiny-llava"))


@pytest.fixture(scope="module")
def llava(llava_dir):
    from mmrec_gen.models.registry import load_model

    return load_model(llava_dir)


@pytest.fixture(scope="module")
def mm_data(tmp_path_factory):
    from mmrec_gen.data.synthetic import generate_synthetic

    return Path(
        generate_synthetic(tmp_path_factory.mktemp("mm"), num_users=8, num_items=40, seed=5, min_len=8, max_len=12)
    )


def _posters(folder: Path, n: int) -> list[Item]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for k in range(n):
        path = folder / f"p{k}.png"
        Image.new("RGB", (40 + 8 * k, 30), (30 * k % 256, 90, 200 - 20 * k)).save(path)
        items.append(Item(f"p{k}", f"Poster movie {k}", {"genres": "Drama"}, image=str(path)))
    return items


def test_a_vision_config_loads_as_a_vision_language_model(llava):
    from transformers import LlavaForConditionalGeneration

    assert isinstance(llava.model, LlavaForConditionalGeneration)
    assert llava.tokenizer.image_token == "<image>" and hasattr(llava.tokenizer, "image_processor")
    assert llava.tokenizer.tokenizer.padding_side == "left"


def test_image_selection_takes_candidates_first_then_recent_history_within_the_budget():
    with_img = [Item(f"i{k}", "t", image=f"/x/{k}.png") for k in range(6)]
    no_img = Item("n", "t")
    history, candidates = [with_img[0], no_img, with_img[1], with_img[2]], [with_img[3], no_img, with_img[4]]
    assert ImageSelection("candidates", 5, 20).choose(history, candidates) == (set(), {0, 2})
    assert ImageSelection("history", 2, 20).choose(history, candidates) == ({3, 2}, set())
    assert ImageSelection("history", 3, 20).choose(history, candidates) == ({3, 2}, set())  # index 1 has no image
    assert ImageSelection("both", 5, 3).choose(history, candidates) == ({3}, {0, 2})
    assert ImageSelection("both", 5, 0).choose(history, candidates) == (set(), set())
    with pytest.raises(ValueError, match="--image-items"):
        ImageSelection("posters")


def test_image_soft_tokens_land_exactly_at_image_slots(llava, tmp_path):
    """One block of the processor's image tokens per real image, none from text ("<image>" in a title stays
    text), and inside the model the merged embeddings at those positions are the projected image features."""
    from mmrec_gen.rank.hf_backend import HFBackend

    processor = llava.tokenizer
    items = _posters(tmp_path / "img", 4)
    forged = Item("f", "Evil <image> title <image>", {"genres": "Drama"}, image=None)
    builder = PromptBuilder(
        processor, "rank_listwise_images", use_images=True, image_token_count=IMAGE_TOKENS,
        image_selection=ImageSelection("both", history=1, max_images=20),
    )  # fmt: skip
    history = [HistoryEntry(items[0], 4.0), HistoryEntry(forged, 3.0), HistoryEntry(items[1], 5.0)]
    prompt = builder.rank("u1", history, [items[2], forged, items[3]])
    # Candidates with an image, then the last history item (the budget of 1 history image).
    assert prompt.images == [items[1].image, items[2].image, items[3].image]
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    assert prompt.input_ids.count(image_id) == 3
    assert "Evil <\u200bimage> title" in prompt.prompt_text  # neutralized: no image token from data

    backend = HFBackend(llava, batch_size=2, progress=False)
    inputs = backend._image_inputs([prompt])
    ids = inputs["input_ids"][0].tolist()
    runs, k = [], 0
    while k < len(ids):
        if ids[k] == image_id:
            start = k
            while k < len(ids) and ids[k] == image_id:
                k += 1
            runs.append(k - start)
        else:
            k += 1
    assert runs == [IMAGE_TOKENS] * 3
    # The pixels are those of the prompt's images, in the order of their blocks.
    from PIL import Image

    expected = processor.image_processor([Image.open(path).convert("RGB") for path in prompt.images])
    pixels = torch.as_tensor(expected["pixel_values"]).to(inputs["pixel_values"].dtype)  # the model's dtype
    torch.testing.assert_close(inputs["pixel_values"], pixels)

    captured = {}
    language_model = llava.model.model.language_model
    hook = language_model.register_forward_pre_hook(
        lambda _m, _a, kw: captured.update(embeds=kw["inputs_embeds"].detach().clone()), with_kwargs=True
    )
    try:
        with torch.no_grad():
            llava.model(**inputs, logits_to_keep=1)
            features = llava.model.model.get_image_features(pixel_values=inputs["pixel_values"], return_dict=True)
            features = torch.cat(list(features.pooler_output), dim=0)
            text_embeds = llava.model.get_input_embeddings()(
                inputs["input_ids"].masked_fill(inputs["input_ids"] == image_id, 0)
            )
    finally:
        hook.remove()
    at_images = inputs["input_ids"][0] == image_id
    torch.testing.assert_close(captured["embeds"][0, at_images], features.reshape(-1, features.shape[-1]))
    torch.testing.assert_close(captured["embeds"][0, ~at_images], text_embeds[0, ~at_images])


@pytest.mark.parametrize("policy", ["skip", "placeholder", "fail"])
def test_bad_images_follow_the_policy_in_prompts(policy, llava, tmp_path, caplog):
    """A 0-byte and a truncated poster: skip shows those items without an image, placeholder keeps their image
    blocks (the backend reads the grey placeholder), fail stops naming the file."""
    from mmrec_gen.data.images import BadImageError, ImageReader
    from mmrec_gen.rank.hf_backend import HFBackend

    items = _posters(tmp_path / "img", 3)
    Path(items[1].image).write_bytes(b"")
    data = Path(items[2].image).read_bytes()
    Path(items[2].image).write_bytes(data[: len(data) // 2])
    builder = PromptBuilder(
        llava.tokenizer, "rank_listwise_images", use_images=True, image_token_count=IMAGE_TOKENS,
        image_selection=ImageSelection("candidates"), image_reader=ImageReader(policy),
    )  # fmt: skip
    if policy == "fail":
        with pytest.raises(BadImageError, match="p1.png"):
            builder.rank("u1", [], items)
        return
    prompt = builder.rank("u1", [], items)
    expected = [items[0].image] if policy == "skip" else [i.image for i in items]
    assert prompt.images == expected
    assert builder.image_reader.report.counts() == {"empty": 1, "truncated": 1}
    assert "bad image" in caplog.text and "p1.png" in caplog.text
    inputs = HFBackend(llava, batch_size=1, progress=False)._image_inputs([prompt])
    assert inputs["pixel_values"].shape[0] == len(expected)


def _rank_cfg(mm_data, llava_dir, tmp_path, mode, **kw):
    from mmrec_gen.rank.rank_config import RankConfig

    options = dict(
        data=str(mm_data), images=str(mm_data / "images"), model=llava_dir, mode=mode, out=str(tmp_path / f"{mode}.jsonl"),
        max_users=4, num_candidates=5, cache_dir=str(tmp_path / "cand"), progress=False, max_history=5, batch_size=2,
        template="rank_listwise_images", max_new_tokens=12,
    )  # fmt: skip
    options.update(kw)
    return RankConfig(**options)


@pytest.mark.parametrize("mode", ["score", "constrained", "generate"])
def test_the_tiny_llava_ranks_with_images_in_every_mode(mode, mm_data, llava_dir, llava, tmp_path):
    from mmrec_gen.rank.pipeline import run_rank

    rows = run_rank(_rank_cfg(mm_data, llava_dir, tmp_path, mode), loaded_model=llava)
    assert len(rows) == 4 and all(r["error"] is None for r in rows)
    for row in rows:
        assert sorted(row["ranking"]) == sorted(row["candidates"])
    if mode != "generate":  # score and constrained always give a valid permutation (R3)
        assert all(r["valid"] for r in rows)


def test_on_bad_image_fail_stops_a_ranking_run_naming_the_file(mm_data, llava_dir, llava, tmp_path):
    """Under fail a bad poster stops the run (it is not turned into one user's error row); skip ranks on."""
    import shutil

    from mmrec_gen.data.images import BadImageError
    from mmrec_gen.rank.pipeline import run_rank

    images = tmp_path / "images"
    shutil.copytree(mm_data / "images", images)
    for poster in images.iterdir():
        poster.write_bytes(b"")  # every poster empty
    with pytest.raises(BadImageError, match="empty"):
        run_rank(_rank_cfg(mm_data, llava_dir, tmp_path / "f", "score", images=str(images), on_bad_image="fail"),
                 loaded_model=llava)  # fmt: skip
    rows = run_rank(_rank_cfg(mm_data, llava_dir, tmp_path / "s", "score", images=str(images)), loaded_model=llava)
    assert len(rows) == 4 and all(r["error"] is None and r["valid"] for r in rows)


def test_the_images_change_the_scores(mm_data, llava_dir, llava, tmp_path):
    """The same prompts with no image shown (a budget of 0) score differently: the pixels reach the model."""
    from mmrec_gen.rank.pipeline import run_rank

    with_images = run_rank(_rank_cfg(mm_data, llava_dir, tmp_path / "a", "score"), loaded_model=llava)
    without = run_rank(_rank_cfg(mm_data, llava_dir, tmp_path / "b", "score", max_images=0), loaded_model=llava)
    assert [r["candidates"] for r in with_images] == [r["candidates"] for r in without]
    assert all(a["scores"] != b["scores"] for a, b in zip(with_images, without, strict=True))


def test_a_batch_ranks_as_each_prompt_alone(mm_data, llava_dir, llava, tmp_path):
    from mmrec_gen.rank.pipeline import run_rank

    batched = run_rank(_rank_cfg(mm_data, llava_dir, tmp_path / "a", "score", batch_size=4), loaded_model=llava)
    alone = run_rank(_rank_cfg(mm_data, llava_dir, tmp_path / "b", "score", batch_size=1), loaded_model=llava)
    for a, b in zip(batched, alone, strict=True):
        torch.testing.assert_close(torch.tensor(a["scores"]), torch.tensor(b["scores"]), atol=1e-4, rtol=1e-4)


def test_the_tiny_llava_explains_with_images(mm_data, llava_dir, llava, tmp_path):
    from mmrec_gen.rank.pipeline import run_explain
    from mmrec_gen.rank.rank_config import ExplainConfig

    cfg = ExplainConfig(
        data=str(mm_data), images=str(mm_data / "images"), model=llava_dir, out=str(tmp_path / "why.jsonl"),
        max_users=3, num_candidates=5, cache_dir=str(tmp_path / "cand"), progress=False, max_history=5,
        max_new_tokens=8, image_items="both", image_history=2,
    )  # fmt: skip
    rows = run_explain(cfg, loaded_model=llava)
    assert len(rows) == 3 and all(r["error"] is None and isinstance(r["explanation"], str) for r in rows)


# ------------------------------------------------------------------------------------------------ training
def _train_cfg(mm_data, llava_dir, out, **kw):
    from mmrec_gen.train.config import SFTTrainConfig

    options = dict(
        data=str(mm_data), images=str(mm_data / "images"), model=llava_dir, output_dir=str(out), max_users=3,
        num_candidates=4, max_history=4, template="rank_listwise_images", max_steps=1, per_device_train_batch_size=2,
        gradient_accumulation_steps=1, learning_rate=1e-2, warmup_steps=0, progress=False, save_steps=100,
        report_to="none", lora_r=4, lora_dropout=0.0, logging_steps=1, min_history=3,
    )  # fmt: skip
    options.update(kw)
    return SFTTrainConfig(**options)


def test_training_labels_are_the_answer_only_never_an_image_token(mm_data, llava_dir, llava, tmp_path):
    from mmrec_gen.train.rows import RowStats
    from mmrec_gen.train.trainers import _examples
    from mmrec_gen.train.vlm_trainer import IGNORE_INDEX, VLMCollator, end_of_turn, vlm_rows

    cfg = _train_cfg(mm_data, llava_dir, tmp_path / "out")
    ds, rendered = _examples(cfg, llava, RowStats())
    rows = vlm_rows(cfg, ds, rendered)[:2]
    assert all(len(r["images"]) == cfg.num_candidates for r in rows)  # every synthetic candidate has an image
    processor = llava.tokenizer
    eot = end_of_turn(processor)
    assert eot == "<|im_end|>"
    batch = VLMCollator(processor, eot)(rows)
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    assert int((batch["input_ids"] == image_id).sum()) == 2 * cfg.num_candidates * IMAGE_TOKENS
    assert bool((batch["labels"][batch["input_ids"] == image_id] == IGNORE_INDEX).all())
    for row, r in enumerate(rows):
        labelled = batch["labels"][row][batch["labels"][row] != IGNORE_INDEX].tolist()
        assert labelled == processor.tokenizer(r["answer"] + eot, add_special_tokens=False)["input_ids"]


def _changed(before: dict, model) -> set[str]:
    return {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}


@pytest.mark.parametrize("train_projector", [False, True])
def test_a_lora_step_changes_only_language_model_adapters(train_projector, mm_data, llava_dir, tmp_path):
    """LoRA lands on the language model only; the vision tower never changes; the projector changes only with
    --train-projector (a trainable copy saved with the adapter, LLaVA's stage 2), and the adapter then ranks."""
    from safetensors.torch import load_file

    from mmrec_gen.models.registry import load_model
    from mmrec_gen.rank.pipeline import run_rank
    from mmrec_gen.train.vlm_trainer import run_vlm_sft

    loaded = load_model(llava_dir)
    before = {n: p.detach().clone() for n, p in loaded.model.named_parameters()}
    out = tmp_path / "out"
    summary = run_vlm_sft(_train_cfg(mm_data, llava_dir, out, train_projector=train_projector), loaded=loaded)
    assert summary["steps"] == 1 and summary["path"] == "vlm"
    model = loaded.model  # PEFT injected its layers into this module in place
    params = dict(model.named_parameters())
    base = {n: p for n, p in params.items() if "lora_" not in n and "modules_to_save" not in n}
    for name, p in base.items():  # every original weight (vision tower, projector, language model) is unchanged
        key = name.replace("base_model.model.", "").replace(".original_module", "").replace(".base_layer", "")
        assert torch.equal(before[key], p.detach()), name
    lora = {n for n in params if "lora_" in n}
    assert lora and all(".language_model." in n for n in lora)
    assert not any("vision_tower" in n or "multi_modal_projector" in n for n in lora)
    lora_b = [p for n, p in params.items() if "lora_B" in n]
    assert any(bool(p.detach().abs().sum() > 0) for p in lora_b)  # the step moved the adapters (B starts at 0)
    copies = {n: p for n, p in params.items() if "modules_to_save" in n}
    saved = load_file(str(out / "adapter_model.safetensors"))
    if not train_projector:
        assert copies == {} and not any("multi_modal_projector" in k for k in saved)
    else:
        assert copies and all("multi_modal_projector" in n for n in copies)
        original = {n: before[n.replace(".modules_to_save.default", "")] for n in copies}
        moved = [n for n, p in copies.items() if not torch.equal(p.detach(), original[n])]
        assert moved, "the trainable projector copy did not change"
        assert any("multi_modal_projector" in k for k in saved)
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert "multi_modal_projector" in adapter["exclude_modules"]
    rows = run_rank(
        _rank_cfg(mm_data, llava_dir, tmp_path, "score", adapter=str(out)), loaded_model=load_model(llava_dir)
    )
    assert all(r["valid"] for r in rows)


# ------------------------------------------------------------------------------------------------ LLaVA-NeXT
def test_an_anyres_model_gets_each_images_own_token_count(mm_data, tmp_path):
    """LLaVA-NeXT expands an image into a count that depends on its aspect ratio: each block is as long as the
    processor makes that image, the budget counts the largest, and the model ranks (score mode, batch = alone)."""
    from PIL import Image

    from mmrec_gen.models.registry import load_model
    from mmrec_gen.models.tiny import save_tiny_llava_next
    from mmrec_gen.prompting.image_blocks import image_token_count
    from mmrec_gen.rank.hf_backend import HFBackend
    from mmrec_gen.rank.pipeline import run_rank

    folder = save_tiny_llava_next(tmp_path / "next")
    loaded = load_model(folder)
    processor = loaded.tokenizer
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    wide, tall = tmp_path / "wide.png", tmp_path / "tall.png"
    Image.new("RGB", (64, 30), (200, 10, 10)).save(wide)
    Image.new("RGB", (30, 64), (10, 10, 200)).save(tall)

    def alone(path) -> int:
        out = processor(text=["<image>"], images=[[Image.open(path).convert("RGB")]], add_special_tokens=False)
        return out["input_ids"][0].count(image_id) if isinstance(out["input_ids"][0], list) else 0

    counts = {p: alone(p) for p in (wide, tall)}
    assert counts[wide] != counts[tall]
    assert image_token_count(processor) >= max(counts.values())
    items = [Item("w", "Wide", image=str(wide)), Item("t", "Tall", image=str(tall)), Item("n", "No image")]
    builder = PromptBuilder(processor, "rank_listwise_images", use_images=True, image_token_count=60)
    prompt = builder.rank("u1", [], items)
    ids = HFBackend(loaded, progress=False)._image_inputs([prompt])["input_ids"][0].tolist()
    runs, k = [], 0
    while k < len(ids):
        start = k
        while k < len(ids) and ids[k] == image_id:
            k += 1
        if k > start:
            runs.append(k - start)
        k += 1 if k == start else 0
    assert runs == [counts[wide], counts[tall]]
    batched = run_rank(
        _rank_cfg(mm_data, folder, tmp_path / "a", "score", batch_size=4, max_images=3), loaded_model=loaded
    )
    single = run_rank(
        _rank_cfg(mm_data, folder, tmp_path / "b", "score", batch_size=1, max_images=3), loaded_model=loaded
    )
    assert all(r["valid"] for r in batched)
    for a, b in zip(batched, single, strict=True):  # fp32 noise only: the vision tower batches tiles differently
        torch.testing.assert_close(torch.tensor(a["scores"]), torch.tensor(b["scores"]), atol=5e-4, rtol=1e-3)


def test_training_commands_route_vision_language_models(mm_data, llava_dir, tmp_path):
    """`mmrec train sft` picks the vision-language trainer for a VLM folder (item tokens refused there); DPO, which
    would drop the images, is refused with the way out."""
    from mmrec_gen.cli_train import train_and_report
    from mmrec_gen.train.config import DPOTrainConfig

    with pytest.raises(ValueError, match="--item-tokens are for text LLMs"):
        train_and_report("sft", _train_cfg(mm_data, llava_dir, tmp_path / "a", item_tokens="image", head="items"))
    dpo = DPOTrainConfig(data=str(mm_data), images=str(mm_data / "images"), model=llava_dir,
                         output_dir=str(tmp_path / "b"), report_to="none")  # fmt: skip
    with pytest.raises(ValueError, match="does not take vision-language models"):
        train_and_report("dpo", dpo)
