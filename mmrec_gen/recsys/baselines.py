"""`mmrec baseline pop|sasrec|mse`: classic recommenders on the very same candidate files as the LLMs.

Each baseline is fitted on the train split and early-stopped on a *monitor* interaction per user that is never the
evaluation target: for `--split test` the monitor is the valid interaction; for `--split valid` it is the last
training interaction, which is then held out of the fit. The candidate file comes from `prepare_inputs`, so it is
the same versioned file `mmrec rank` uses; rows have the `mmrec rank` layout (meta.mode = "baseline",
meta.template = null) and ties in a ranking are broken by item id (`id_sort_key`). Every user of the candidate file
(or of the first --max-users) ends as a result row or as an error row naming it.

MSE rows also carry `pred_rating` / `true_rating` of the target, and meta holds `rating_train_mean` (the mean of the
fitted ratings: the global-mean predictor `mmrec evaluate` compares RMSE against).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from mmrec_gen.data.data_args import EvalDataArguments, check_positive
from mmrec_gen.data.files import atomic_write, check_output_file
from mmrec_gen.data.inputs import RunInputs, inputs_for, run_meta
from mmrec_gen.data.rows import ResultRow, catalogue_row, rank_by_scores
from mmrec_gen.data.schema import CandidateRow, Interaction
from mmrec_gen.data.split import SplitResult, id_sort_key

logger = logging.getLogger(__name__)

BASELINES = ("pop", "sasrec", "mse")


@dataclass(kw_only=True)
class BaselineConfig(EvalDataArguments):
    """The data and candidate options every command shares (--images is read by mse only), plus the output file."""

    out: str = field(metadata={"help": "Output JSONL in the `mmrec rank` format (one line per user)."})


@dataclass(kw_only=True)
class PopConfig(BaselineConfig):
    ranks_all_items = True  # --num-candidates all: popularity scores any item


@dataclass(kw_only=True)
class SASRecConfig(BaselineConfig):
    ranks_all_items = True  # --num-candidates all: SASRec scores any item
    hidden: int = field(default=64, metadata={"help": "Embedding / hidden size."})
    num_blocks: int = field(default=2, metadata={"help": "Self-attention blocks."})
    num_heads: int = field(default=1, metadata={"help": "Attention heads."})
    dropout: float = field(default=0.2, metadata={"help": "Dropout rate."})
    max_len: int = field(default=50, metadata={"help": "Most recent items of a sequence the model reads."})
    epochs: int = field(default=200, metadata={"help": "Maximum training epochs."})
    batch_size: int = field(default=128, metadata={"help": "Users per training batch."})
    lr: float = field(default=1e-3, metadata={"help": "Adam learning rate."})
    eval_every: int = field(default=5, metadata={"help": "Epochs between monitor NDCG@10 checks."})
    patience: int = field(default=5, metadata={"help": "Checks without improvement before stopping."})

    def __post_init__(self):
        super().__post_init__()
        if self.hidden % self.num_heads:
            raise ValueError(f"--hidden ({self.hidden}) must be divisible by --num-heads ({self.num_heads})")
        check_positive(self, "hidden", "num_blocks", "max_len", "epochs", "batch_size", "eval_every", "patience")


@dataclass(kw_only=True)
class MSEConfig(BaselineConfig):
    encoder: str = field(
        default="minilm",
        metadata={"help": "Text encoder: minilm, llm (mean-pooled hidden states of --llm-model), or an HF id/folder."},
    )
    llm_model: str = field(default="smollm2-135m-instruct", metadata={"help": "The LLM behind --encoder llm."})
    fusion: str = field(default="concat", metadata={"help": "concat or weighted (learned softmax weights)."})
    hidden: int = field(default=128, metadata={"help": "MLP hidden size."})
    dropout: float = field(default=0.1, metadata={"help": "MLP dropout."})
    epochs: int = field(default=50, metadata={"help": "Maximum epochs (early stopping on monitor RMSE)."})
    batch_size: int = field(default=128, metadata={"help": "Ratings per training batch."})
    lr: float = field(default=1e-3, metadata={"help": "Adam learning rate."})
    patience: int = field(default=5, metadata={"help": "Epochs without monitor improvement before stopping."})
    max_length: int = field(default=128, metadata={"help": "Encoder tokens per text."})
    max_text_chars: int = field(default=300, metadata={"help": "Each item text field is cut to this many chars."})
    encode_batch_size: int = field(default=64, metadata={"help": "Texts per encoder forward pass."})
    embeddings_dir: str | None = field(
        default=None, metadata={"help": "Embedding cache folder (default $MMREC_HOME/embeddings)."}
    )
    image_encoder: str = field(
        default="efficientnet-lite0", metadata={"help": "Image encoder for --images (item image features)."}
    )
    image_size: int = field(default=224, metadata={"help": "Images are resized to this square size (224 = trained)."})
    finetune_encoder: bool = field(
        default=False,
        metadata={
            "help": "Fine-tune the encoder itself (AutoModelForSequenceClassification, num_labels=1) on "
            "(history text, item text) pairs instead of training the MLP on frozen embeddings."
        },
    )
    finetune_max_ratings: int = field(
        default=4000, metadata={"help": "Fine-tuning: training ratings sampled (seeded) from the train split."}
    )
    finetune_epochs: int = field(default=1, metadata={"help": "Fine-tuning epochs."})
    finetune_lr: float = field(default=3e-5, metadata={"help": "Fine-tuning AdamW learning rate."})
    finetune_batch_size: int = field(default=16, metadata={"help": "Fine-tuning pairs per batch."})
    history_items: int = field(default=10, metadata={"help": "Fine-tuning: history items in the user text."})

    def __post_init__(self):
        super().__post_init__()
        from mmrec_gen.recsys.mse_head import FUSIONS

        if self.fusion not in FUSIONS:
            raise ValueError(f"--fusion must be one of {', '.join(FUSIONS)}, got {self.fusion!r}")
        check_positive(self, "hidden", "epochs", "batch_size", "patience", "max_length", "finetune_max_ratings")


CONFIGS = {"pop": PopConfig, "sasrec": SASRecConfig, "mse": MSEConfig}


@dataclass
class BaselineRun:
    rows: list[dict[str, Any]]
    train_seconds: float
    score_seconds: float
    info: dict[str, Any] = field(default_factory=dict)


def training_view(
    split_result: SplitResult, split: str
) -> tuple[dict[str, list[Interaction]], dict[str, Interaction]]:
    """Per user: the interactions to fit on (oldest first) and the monitor interaction for early stopping."""
    fit, monitor = {}, {}
    for uid, us in split_result.users.items():
        if split == "test":
            fit[uid], monitor[uid] = list(us.train), us.valid
        else:
            fit[uid], monitor[uid] = list(us.train[:-1]), us.train[-1]
    return fit, monitor


def ranking_from_scores(candidates: Sequence[str], scores: Sequence[float]) -> list[str]:
    """Candidates by score (high first); equal scores by item id (the result row's tie rule, data/rows.py)."""
    return rank_by_scores(list(candidates), [float(s) for s in scores])


def result_row(crow: CandidateRow, scores: Sequence[float], n_history: int, meta: dict, **extra) -> dict:
    if len(scores) != len(crow.candidates):
        raise ValueError(f"{len(scores)} scores for {len(crow.candidates)} candidates")
    row = ResultRow.scored(crow.user_id, crow.candidates, crow.target, scores, meta, n_history=n_history, **extra)
    return _as_written(row.to_dict(), meta)


def _as_written(row: dict, meta: dict) -> dict:
    """A whole-catalogue run (`--num-candidates all`) keeps the top of each ranking (data/rows.py catalogue_row)."""
    return catalogue_row(row) if meta.get("candidates") == "all" else row


def rating_row(crow: CandidateRow, ratings: Sequence[float], n_history: int, meta: dict, true_rating) -> dict:
    """A row ranked by predicted ratings, carrying the target's predicted and true rating (for RMSE/MAE)."""
    predicted = float(ratings[crow.candidates.index(crow.target)])
    return result_row(crow, ratings, n_history, meta, pred_rating=predicted, true_rating=true_rating)


def error_row(crow: CandidateRow, message: str, meta: dict) -> dict:
    return _as_written(ResultRow.failed(crow.user_id, crow.candidates, crow.target, message, meta).to_dict(), meta)


def score_rows(
    crows: Sequence[CandidateRow],
    score_chunk: Callable[[Sequence[CandidateRow]], list[dict]],
    meta: dict,
    chunk_size: int = 256,
) -> list[dict]:
    """Score users in chunks; a failing chunk is retried user by user, and a user that still fails is an error row."""
    rows: list[dict] = []
    for start in range(0, len(crows), chunk_size):
        chunk = crows[start : start + chunk_size]
        try:
            rows.extend(score_chunk(chunk))
            continue
        except (KeyError, ValueError, IndexError, RuntimeError) as exc:
            logger.warning(
                "scoring users %s..%s failed (%s); retrying one by one", chunk[0].user_id, chunk[-1].user_id, exc
            )
        for crow in chunk:
            try:
                rows.extend(score_chunk([crow]))
            except (KeyError, ValueError, IndexError, RuntimeError) as exc:
                rows.append(error_row(crow, f"{type(exc).__name__}: {exc}", meta))
    return rows


def _rows_to_rank(inputs: RunInputs, cfg: BaselineConfig) -> list[CandidateRow]:
    rows = inputs.candidate_file.rows
    return rows[: cfg.max_users] if cfg.max_users else rows


def _meta(inputs: RunInputs, model: str, **extra) -> dict:
    return {**run_meta(inputs, model=model, mode="baseline", template=None, shots=0), **extra}


def run_pop(cfg: PopConfig, inputs: RunInputs) -> BaselineRun:
    from mmrec_gen.recsys.popularity import PopularityModel

    fit, _ = training_view(inputs.split_result, cfg.split)
    start = time.perf_counter()
    model = PopularityModel().fit([i.item_id for i in seq] for seq in fit.values())
    train_s = time.perf_counter() - start
    meta = _meta(inputs, "pop")
    users = inputs.split_result.users

    def chunk(crows):
        return [
            result_row(c, model.scores(c.candidates), len(users[c.user_id].history_and_target(cfg.split)[0]), meta)
            for c in crows
        ]

    start = time.perf_counter()
    rows = score_rows(_rows_to_rank(inputs, cfg), chunk, meta)
    return BaselineRun(rows, train_s, time.perf_counter() - start)


def run_sasrec(cfg: SASRecConfig, inputs: RunInputs) -> BaselineRun:
    from mmrec_gen.recsys.sasrec import SASRecParams, SASRecRecommender

    params = SASRecParams(
        hidden=cfg.hidden, num_blocks=cfg.num_blocks, num_heads=cfg.num_heads, dropout=cfg.dropout,
        max_len=cfg.max_len, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, eval_every=cfg.eval_every,
        patience=cfg.patience, seed=cfg.seed,
    )  # fmt: skip
    ds, users = inputs.dataset, inputs.split_result.users
    fit, monitor = training_view(inputs.split_result, cfg.split)
    rec = SASRecRecommender(sorted(ds.items, key=id_sort_key), params)
    train_s = rec.fit({u: [i.item_id for i in s] for u, s in fit.items()}, {u: m.item_id for u, m in monitor.items()})
    best = max((h["monitor_ndcg@10"] for h in rec.history), default=None)
    meta = _meta(inputs, "sasrec")

    def chunk(crows):
        histories = [[i.item_id for i in users[c.user_id].history_and_target(cfg.split)[0]] for c in crows]
        scores = rec.score(histories, [c.candidates for c in crows])
        return [result_row(c, s, len(h), meta) for c, s, h in zip(crows, scores, histories, strict=True)]

    start = time.perf_counter()
    rows = score_rows(_rows_to_rank(inputs, cfg), chunk, meta)
    info = {"epochs_run": rec.history[-1]["epoch"] if rec.history else cfg.epochs, "best_monitor_ndcg@10": best}
    return BaselineRun(rows, train_s, time.perf_counter() - start, info)


def _rated(seq: Sequence[Interaction]) -> list[Interaction]:
    return [i for i in seq if i.rating is not None]


def run_mse(cfg: MSEConfig, inputs: RunInputs) -> BaselineRun:
    """Frozen embeddings + MLP (default), or the fine-tuned encoder itself with --finetune-encoder."""
    import numpy as np

    from mmrec_gen.recsys.mse_head import RatingScale

    ds, users = inputs.dataset, inputs.split_result.users
    known = ds.interactions["rating"].dropna()
    if known.empty:
        raise ValueError(f"{cfg.data}: the dataset has no ratings; the mse baseline predicts ratings (use pop/sasrec)")
    scale = RatingScale(float(known.min()), float(known.max()))
    fit, monitor = training_view(inputs.split_result, cfg.split)
    fit = {u: _rated(s) for u, s in fit.items()}
    monitor = {u: m for u, m in monitor.items() if m.rating is not None}
    train_ratings = [i.rating for s in fit.values() for i in s]
    if not train_ratings:
        raise ValueError(f"{cfg.data}: no rated interaction in the train split; the mse baseline needs ratings")
    extra_meta = {
        "rating_train_mean": float(np.mean(train_ratings)), "rating_range": [scale.low, scale.high],
        "encoder": cfg.encoder, "fusion": None if cfg.finetune_encoder else cfg.fusion,
    }  # fmt: skip
    if cfg.finetune_encoder:
        if cfg.images:
            logger.warning("--images: --finetune-encoder tunes a text encoder; item images are not used")
        return _run_mse_finetune(cfg, inputs, scale, fit, monitor, extra_meta)
    from mmrec_gen.features.text_encoders import item_text_embeddings
    from mmrec_gen.recsys.mse_head import MSEHead, MSEHeadParams, RatingRows

    item_ids = sorted(ds.items, key=id_sort_key)
    index = {item: k for k, item in enumerate(item_ids)}
    encoder = _text_encoder(cfg)
    start = time.perf_counter()
    blocks = [
        item_text_embeddings(
            [ds.items[i] for i in item_ids], encoder, max_text_chars=cfg.max_text_chars,
            cache_dir=cfg.embeddings_dir, batch_size=cfg.encode_batch_size,
        )
    ]  # fmt: skip
    model_name = f"mse-{encoder.name}"
    image_report = None
    if cfg.images:
        from mmrec_gen.features.image_features import image_feature_table

        images = image_feature_table(
            cfg.image_encoder, ds, item_ids, size=cfg.image_size, cache_dir=cfg.embeddings_dir,
            on_bad_image=cfg.on_bad_image, max_image_pixels=cfg.max_image_pixels,
        )  # fmt: skip
        blocks.append(images.table)
        model_name += "+image"
        image_report = images.report.to_dict()
        # Rows carry the counts; the full list of bad files goes to <out>.images.json (see run_baseline).
        extra_meta["bad_images"] = {k: image_report[k] for k in ("policy", "bad_images", "bad_by_problem")}
    encode_s = time.perf_counter() - start
    params = MSEHeadParams(
        fusion=cfg.fusion, hidden=cfg.hidden, dropout=cfg.dropout, epochs=cfg.epochs, batch_size=cfg.batch_size,
        lr=cfg.lr, patience=cfg.patience, seed=cfg.seed,
    )  # fmt: skip
    head = MSEHead(blocks, params)

    def pairs(seq: Sequence[Interaction]) -> list[tuple[int, float]]:
        return [(index[i.item_id], scale.to_unit(i.rating)) for i in seq]

    fit_users = list(fit)
    profiles = head.profiles([pairs(fit[u]) for u in fit_users])
    tu, ti, tr = zip(*[(k, i, r) for k, u in enumerate(fit_users) for i, r in pairs(fit[u])], strict=True)
    mon = [
        (k, index[monitor[u].item_id], scale.to_unit(monitor[u].rating))
        for k, u in enumerate(fit_users)
        if u in monitor
    ]
    monitor_rows = RatingRows.build(*zip(*mon, strict=True), exclude=False) if mon else None
    train_s = head.fit(profiles, RatingRows.build(tu, ti, tr, exclude=True), monitor_rows)
    meta = _meta(inputs, model_name, **extra_meta, fusion_weights=head.model.fusion_weights())

    def chunk(crows):
        targets = [users[c.user_id].history_and_target(cfg.split) for c in crows]
        chunk_profiles = head.profiles([pairs(_rated(h)) for h, _ in targets])
        rows = RatingRows.build(
            [k for k, c in enumerate(crows) for _ in c.candidates], [index[i] for c in crows for i in c.candidates],
            np.zeros(sum(len(c.candidates) for c in crows)), exclude=False,
        )  # fmt: skip
        pred = scale.from_unit(head.predict(chunk_profiles, rows))
        out, at = [], 0
        for c, (hist, target) in zip(crows, targets, strict=True):
            n = len(c.candidates)
            scores = pred[at : at + n].tolist()
            at += n
            out.append(rating_row(c, scores, len(hist), meta, target.rating))
        return out

    start = time.perf_counter()
    rows = score_rows(_rows_to_rank(inputs, cfg), chunk, meta)
    info = {"encode_seconds": encode_s, "epochs_run": len(head.history), "history": head.history}
    if image_report is not None:
        info["images"] = image_report
    return BaselineRun(rows, train_s, time.perf_counter() - start, info)


def _text_encoder(cfg: MSEConfig):
    """--encoder llm pools a registered LLM's hidden states (models/); any other name is a features/ encoder."""
    if cfg.encoder == "llm":
        from mmrec_gen.models.llm_encoder import load_llm_encoder

        return load_llm_encoder(llm_model=cfg.llm_model, max_length=cfg.max_length)
    from mmrec_gen.features.text_encoders import load_text_encoder

    return load_text_encoder(cfg.encoder, max_length=cfg.max_length)


def _run_mse_finetune(cfg, inputs, scale, fit, monitor, extra_meta) -> BaselineRun:
    """--finetune-encoder: AutoModelForSequenceClassification(num_labels=1) on (history text, item text) pairs."""
    from mmrec_gen.features.text_encoders import item_text
    from mmrec_gen.recsys.mse_finetune import EncoderFinetuner, FinetuneParams, user_text

    ds, users = inputs.dataset, inputs.split_result.users
    params = FinetuneParams(
        epochs=cfg.finetune_epochs, lr=cfg.finetune_lr, batch_size=cfg.finetune_batch_size,
        max_length=cfg.max_length, seed=cfg.seed,
    )  # fmt: skip
    tuner = EncoderFinetuner(cfg.encoder, params)

    def utext(seq: Sequence[Interaction]) -> str:
        recent = seq[-cfg.history_items :] if cfg.history_items else []
        return user_text([(ds.items[i.item_id].title, i.rating) for i in recent], cfg.max_text_chars)

    def itext(item_id: str) -> str:
        return item_text(ds.items[item_id], cfg.max_text_chars)

    # Leave-one-out: a training pair's user text never shows that pair's own item and rating.
    train = [(u, k) for u, seq in fit.items() for k in range(len(seq))]
    from mmrec_gen.data.seeding import rng_for

    rng = rng_for(cfg.seed, "mse-finetune", "sample")
    if len(train) > cfg.finetune_max_ratings:
        train = [train[j] for j in sorted(rng.choice(len(train), cfg.finetune_max_ratings, replace=False).tolist())]
    x_train = [(utext(fit[u][:k] + fit[u][k + 1 :]), itext(fit[u][k].item_id)) for u, k in train]
    y_train = [scale.to_unit(fit[u][k].rating) for u, k in train]
    x_mon = [(utext(fit[u]), itext(m.item_id)) for u, m in monitor.items()]
    y_mon = [scale.to_unit(m.rating) for m in monitor.values()]
    train_s = tuner.fit(x_train, y_train, x_mon, y_mon)
    meta = _meta(inputs, f"mse-ft-{tuner.name}", **extra_meta, finetuned_ratings=len(x_train))

    def chunk(crows):
        out = []
        for c in crows:
            hist, target = users[c.user_id].history_and_target(cfg.split)
            text = utext(_rated(hist))
            scores = scale.from_unit(tuner.predict([(text, itext(i)) for i in c.candidates])).tolist()
            out.append(rating_row(c, scores, len(hist), meta, target.rating))
        return out

    start = time.perf_counter()
    rows = score_rows(_rows_to_rank(inputs, cfg), chunk, meta)
    return BaselineRun(rows, train_s, time.perf_counter() - start, {"history": tuner.history})


def run_baseline(name: str, cfg: BaselineConfig) -> BaselineRun:
    """Fit baseline `name` on the train split, rank the candidate file, write cfg.out; returns rows and timings."""
    from mmrec_gen.data.results import write_results

    if name not in CONFIGS:
        raise ValueError(f"unknown baseline {name!r}: choose one of {', '.join(BASELINES)}")
    if not isinstance(cfg, CONFIGS[name]):
        raise ValueError(f"baseline {name!r} needs a {CONFIGS[name].__name__}, got {type(cfg).__name__}")
    check_output_file(cfg.out)
    inputs = inputs_for(cfg)
    if cfg.images and name != "mse":
        logger.warning("--images: %s ignores item images", name)
    if name == "pop":
        run = run_pop(cfg, inputs)
    elif name == "sasrec":
        run = run_sasrec(cfg, inputs)
    else:
        run = run_mse(cfg, inputs)
    write_results(cfg.out, run.rows)
    if "images" in run.info:  # every bad image file, next to the results (the log names the first three)
        with atomic_write(f"{cfg.out}.images.json") as fh:
            json.dump(run.info["images"], fh, indent=1, ensure_ascii=False)
    n_err = sum(1 for r in run.rows if r["error"])
    logger.info("%s: wrote %d rows (%d error rows) to %s; config %s", name, len(run.rows), n_err, cfg.out, asdict(cfg))
    return run
