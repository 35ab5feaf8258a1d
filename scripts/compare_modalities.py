"""Text item tokens vs text + image item tokens, end to end, on one candidate file (issue 13).

    python scripts/compare_modalities.py --data ../shared/data/ml-latest-small \
        --images ../shared/data/ml-latest-small/posters --json

Both arms train with the recipe's options (`--recipe`, default configs/rec_smollm2_cpu.yaml: the same base model,
steps, batch, learning rate and seed), with `--item-tokens` set to `--sources` (default text) for the `text` arm
and to `--sources` + image for the `text_image` arm; with `--align-steps N` > 0 the image arm's projector is first
aligned (`mmrec train align`, LLaVA's stage 1) and stage (b) starts from it (`--projector`). Each adapter then ranks
the same versioned candidate file (`mmrec rank --adapter`); the metrics are `mmrec evaluate`'s and the paired test
is McNemar's exact test on per-user HR@1 hits (eval/paired.py). Everything goes through the package's functions
(run_align, run_item_sft, run_rank, evaluate_file, paired_hr1), so the runs are the CLI's; a killed comparison run
again continues each training from its last checkpoint and skips what finished. With --json the last line is one
object: {"text": {...}, "text_image": {...}, "paired": {...}}.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass
class CompareConfig:
    data: str = field(metadata={"help": "Dataset folder (MovieLens or generic)."})
    images: str = field(metadata={"help": "Folder of <item_id>.jpg|png item images (posters)."})
    recipe: str = field(
        default=str(REPO / "configs" / "rec_smollm2_cpu.yaml"),
        metadata={"help": "Item-token training config both arms share (model, steps, batch, lr, seed, ...)."},
    )
    sources: str = field(default="text", metadata={"help": "Item-token sources of the text arm (image is added)."})
    output_dir: str = field(default="runs/compare_modalities", metadata={"help": "Adapters and rankings go here."})
    model: str | None = field(default=None, metadata={"help": "Override the recipe's base model."})
    max_steps: int | None = field(default=None, metadata={"help": "Override the recipe's training steps."})
    align_steps: int = field(default=0, metadata={"help": "Projector alignment steps before the image arm; 0: none."})
    max_users: int | None = field(default=None, metadata={"help": "Train on and rank only the first N users."})
    split: str = field(default="test", metadata={"help": "Split ranked (and the one the adapters are built for)."})
    num_candidates: int = field(default=20, metadata={"help": "Candidates per user."})
    seed: int | None = field(default=None, metadata={"help": "Override the recipe's seed (both arms)."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where the candidate file lives."})
    batch_size: int = field(default=8, metadata={"help": "Ranking batch size."})
    progress: bool = field(default=False, metadata={"help": "Show progress bars."})
    json: bool = field(default=False, metadata={"help": "Print the result as one JSON object on the last line."})


def make_parser():
    from mmrec_gen.cli_args import make_parser as config_parser

    return config_parser(CompareConfig, "compare_modalities.py", __doc__.split("\n\n")[0])


def _train_config(cfg: CompareConfig, sources: str, out: Path, projector: str | None):
    from dataclasses import fields

    from mmrec_gen.cli_args import load_yaml_options
    from mmrec_gen.train.config import SFTTrainConfig

    options = load_yaml_options(cfg.recipe, [f.name for f in fields(SFTTrainConfig)])
    options = {k.replace("-", "_"): v for k, v in options.items()}
    options.update(
        data=cfg.data, output_dir=str(out), item_tokens=sources, split=cfg.split, progress=cfg.progress,
        num_candidates=cfg.num_candidates, report_to="none",
    )  # fmt: skip
    if "image" in sources:
        options.update(images=cfg.images, projector=projector)
    for key in ("model", "max_steps", "max_users", "seed"):
        if getattr(cfg, key) is not None:
            options[key] = getattr(cfg, key)
    return SFTTrainConfig(**options)


def _finished_or_run(run, config, loaded=None) -> dict:
    """Run a training; a finished run of the same config (this script run before) is reused as it is."""
    import copy

    from mmrec_gen.train.trainers import RunFinished

    try:  # training changes the model it is given in place (LoRA layers, the layer cut): each run gets a copy
        return run(config, copy.deepcopy(loaded)) if loaded is not None else run(config)
    except RunFinished as done:
        print(done, file=sys.stderr)
        return done.summary


def run_arm(cfg: CompareConfig, name: str, sources: str, loaded=None) -> tuple[dict, list[dict]]:
    """Train one arm and rank the candidate file with it; (its `mmrec evaluate` metrics, its rows)."""
    from mmrec_gen.data.results import read_results
    from mmrec_gen.eval.report import evaluate_file
    from mmrec_gen.rank.pipeline import run_rank
    from mmrec_gen.rank.rank_config import RankConfig
    from mmrec_gen.train.item_rec_trainer import run_item_sft

    out = Path(cfg.output_dir)
    projector = None
    if "image" in sources and cfg.align_steps > 0:
        from mmrec_gen.train.align import AlignConfig, run_align

        train = _train_config(cfg, sources, out / name, None)
        align = AlignConfig(
            data=cfg.data, images=cfg.images, output_dir=str(out / "align"), model=train.model, dtype=train.dtype,
            max_steps=cfg.align_steps, seed=train.seed, progress=cfg.progress, report_to="none",
            max_model_len=train.max_model_len,
        )  # fmt: skip
        _finished_or_run(run_align, align, loaded)
        projector = str(out / "align")
    train = _train_config(cfg, sources, out / name, projector)
    summary = _finished_or_run(run_item_sft, train, loaded)
    ranking = out / f"{name}.jsonl"
    rank = RankConfig(
        data=cfg.data, images=cfg.images if "image" in sources else None, adapter=str(out / name),
        model=train.model, dtype=train.dtype, split=cfg.split, seed=train.seed, num_candidates=cfg.num_candidates,
        max_users=cfg.max_users, cache_dir=cfg.cache_dir, out=str(ranking), batch_size=cfg.batch_size,
        progress=cfg.progress,
    )  # fmt: skip
    run_rank(rank, loaded_model=loaded)
    # Exactly what `mmrec evaluate --json` prints for the file.
    metrics = {k: v for k, v in evaluate_file(ranking).items() if k != "meta" and not isinstance(v, dict)}
    metrics.update(sources=sources.split(","), train_steps=summary.get("steps"), adapter=str(out / name))
    return metrics, read_results(ranking)


def main(cfg: CompareConfig, loaded=None) -> dict:
    """Both arms, then the paired test; `loaded` (a LoadedModel) skips loading the base model (tests)."""
    from mmrec_gen.eval.paired import paired_hr1

    sources = [s.strip() for s in cfg.sources.split(",") if s.strip()]
    if "image" in sources or not sources:
        raise ValueError(f"--sources {cfg.sources!r}: the text arm's sources, without image (it is added)")
    text, text_rows = run_arm(cfg, "text", ",".join(sources), loaded)
    image, image_rows = run_arm(cfg, "text_image", ",".join([*sources, "image"]), loaded)
    paired = paired_hr1(text_rows, image_rows)  # a = text, b = text_image
    paired = {
        "n_users": paired["n_users"], "hr1_text": paired["hr1_a"], "hr1_text_image": paired["hr1_b"],
        "diff_text_image_minus_text": paired["diff_b_minus_a"], "only_text": paired["only_a"],
        "only_text_image": paired["only_b"], "mcnemar_p": paired["mcnemar_p"], "align_steps": cfg.align_steps,
    }  # fmt: skip
    result = {"text": text, "text_image": image, "paired": paired}
    print(
        f"HR@1 text {paired['hr1_text']:.4f} vs text+image {paired['hr1_text_image']:.4f} "
        f"({paired['diff_text_image_minus_text']:+.4f}, {paired['n_users']} users; hit only by text "
        f"{paired['only_text']}, only by text+image {paired['only_text_image']}; McNemar exact p = "
        f"{paired['mcnemar_p']:.3g})"
    )
    if cfg.json:
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    main(make_parser().parse_config(sys.argv[1:]))
