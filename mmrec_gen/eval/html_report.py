"""`mmrec report`: one self-contained HTML file comparing ranking runs (and explanations) user by user.

Everything the page shows is inside the file: inline CSS, matplotlib plots as PNG data URIs, item images downscaled
with Pillow and embedded as data URIs. It has no script and loads nothing, so it opens from disk with no network and
no server. The page is rendered from `templates/report.html.jinja` (shipped with the package) with Jinja's HTML
autoescaping: item titles and explanations are data, never markup.

Contents:
- the metrics table of every run (`mmrec evaluate`'s numbers) under the protocol line, and the explanation metrics
  of `--explanations` (eval/explain_metrics.py);
- plots: HR@k for k = 1..20 per run (all users count, an invalid output is a miss), the rank of the held-out item
  per run (a histogram; invalid outputs in their own bar) and, for runs made with `--adapter DIR` (read from the
  run's `<run>.run.json`), the training loss from the adapter's `trainer_state.json` (or its last checkpoint's);
- one card per sampled user (`--users N`: the first N users of the first run, in candidate-file order; or a file of
  user ids, one per line): the history (oldest first, the last `--history` items) and the first run's ranking, with
  posters, the held-out item marked, every run's rank for it, and the explanation with cited history titles
  highlighted (hallucinated titles too, in another colour) and its evidence items.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmrec_gen.data.files import atomic_write
from mmrec_gen.data.results import read_results
from mmrec_gen.eval.explain_metrics import evaluate_explanation_file
from mmrec_gen.eval.report import evaluate_file, protocol_line
from mmrec_gen.prompting.sanitize import ELLIPSIS
from mmrec_gen.rank.titles import display_title, front_article, strip_year

logger = logging.getLogger(__name__)

# Item text shown in the page is cut like item text in prompts (--max-text-chars' default, with an ellipsis): a
# title appears up to 4 times per item (tooltip, alt text, caption) and in many cards.
MAX_TEXT_CHARS = 300
TEMPLATE = "report.html.jinja"
MAX_K = 20
_METRICS = (("HR@1", "hr@1"), ("HR@5", "hr@5"), ("NDCG@5", "ndcg@5"), ("NDCG@10", "ndcg@10"), ("MRR", "mrr"),
            ("Valid", "valid_ratio"))  # fmt: skip
_EXPLAIN_METRICS = (("Hallucinated", "hallucinated_rate"), ("Cites history", "cites_history_rate"),
                    ("Evidence precision", "evidence_precision"), ("Mean words", "mean_words"),
                    ("Distinct-2", "distinct_2"), ("Genre accuracy", "genre_accuracy"), ("N", "n_explanations"))  # fmt: skip


@dataclass
class ReportConfig:
    runs: list[str]
    data: str
    out: str
    explanations: str | None = None
    images: str | None = None
    users: str = "20"
    history: int = 20
    thumb_px: int = 96
    runs_labels: list[str] = field(default_factory=list)

    def __post_init__(self):
        if not self.runs:
            raise ValueError("mmrec report needs at least one run file")
        if self.history < 1 or self.thumb_px < 16:
            raise ValueError("--history must be >= 1 and --thumb-px >= 16")
        if not self.users.isdigit() and not Path(self.users).is_file():
            raise ValueError(f"--users {self.users!r} is neither a number of users nor a file of user ids")


# ------------------------------------------------------------------------------------------------ numbers
def target_rank(row: dict[str, Any]) -> int | None:
    """1-based rank of the held-out item in a scorable row; None for an invalid output or an error row."""
    if row.get("error") is not None or not row.get("ranking") or not row.get("valid"):
        return None
    ranking = [str(i) for i in row["ranking"]]
    return ranking.index(str(row["target"])) + 1 if str(row["target"]) in ranking else None


def hit_curve(ranks: Sequence[int | None], max_k: int = MAX_K) -> list[float]:
    """HR@k for k = 1..max_k over all users (None, an invalid output, is a miss at every k)."""
    n = len(ranks) or 1
    return [sum(1 for r in ranks if r is not None and r <= k) / n for k in range(1, max_k + 1)]


def loss_history(run: str) -> list[tuple[float, float]] | None:
    """(step, loss) of the adapter a run was ranked with (its `<run>.run.json` names it), from the adapter's
    trainer_state.json or its last checkpoint's; None when the run used no adapter or no log is found."""
    import json

    sidecar = Path(f"{run}.run.json")
    if not sidecar.is_file():
        return None
    adapter = (json.loads(sidecar.read_text(encoding="utf-8")).get("config") or {}).get("adapter")
    if not adapter:
        return None
    folder = Path(adapter)
    states = [folder / "trainer_state.json"] + sorted(
        folder.glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[-1]), reverse=True
    )
    for state in states:
        if state.is_file():
            log = json.loads(state.read_text(encoding="utf-8")).get("log_history") or []
            points = [(float(h["step"]), float(h["loss"])) for h in log if "loss" in h and "step" in h]
            if points:
                return points
    logger.warning("%s: ranked with adapter %s, but no trainer_state.json with a loss log was found", run, adapter)
    return None


# ------------------------------------------------------------------------------------------------ plots
def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def plots(labels: list[str], ranks: list[list[int | None]], losses: dict[str, list], n_candidates: int) -> dict:
    import matplotlib

    matplotlib.use("Agg")  # no display, no GUI toolkit: the figures only become PNG bytes
    import matplotlib.pyplot as plt

    out = {}
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ks = list(range(1, MAX_K + 1))
    for label, r in zip(labels, ranks, strict=True):
        ax.plot(ks, hit_curve(r), marker="o", markersize=3, label=label)
    ax.set(xlabel="k", ylabel="HR@k", title="Hit rate at k (all users; invalid = miss)", ylim=(0, 1.02), xticks=ks)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    out["hit_curve"] = _png(fig)

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    bins = list(range(1, n_candidates + 2))  # one bar per rank; invalid outputs at n_candidates + 1
    values = [[x if x is not None else n_candidates + 1 for x in r] for r in ranks]
    ax.hist(values, bins=[b - 0.5 for b in [*bins, n_candidates + 2]], label=labels)
    ax.set(xlabel=f"rank of the held-out item ({n_candidates + 1} = invalid output)", ylabel="users",
           title="Rank of the held-out item")  # fmt: skip
    ax.legend(fontsize=8)
    out["rank_histogram"] = _png(fig)

    if losses:
        fig, ax = plt.subplots(figsize=(6.4, 3.6))
        for label, points in losses.items():
            ax.plot([s for s, _ in points], [v for _, v in points], label=label)
        ax.set(xlabel="optimizer step", ylabel="training loss", title="Training loss of the tuned runs' adapters")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        out["loss"] = _png(fig)
    return out


# ------------------------------------------------------------------------------------------------ images and text
class Thumbnails:
    """Item images downscaled to `px` on the longer side and embedded as data URIs (one encoding per item)."""

    def __init__(self, px: int) -> None:
        self.px = px
        self._cache: dict[str, str | None] = {}
        self.failed = 0

    def __call__(self, path: str | None) -> str | None:
        if not path:
            return None
        if path not in self._cache:
            self._cache[path] = self._encode(path)
        return self._cache[path]

    def _encode(self, path: str) -> str | None:
        from PIL import Image, ImageOps

        try:
            with Image.open(path) as im:
                im = ImageOps.exif_transpose(im).convert("RGB")
                im.thumbnail((self.px, self.px))
                buf = io.BytesIO()
                im.save(buf, format="JPEG", quality=85)
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            # A bad image file shows as a title placeholder, never as a broken image in the page (counted).
            self.failed += 1
            logger.warning("image %s left out of the report: %s", path, exc)
            return None
        return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def highlight(text: str, cited: Sequence[str], hallucinated: Sequence[str] = ()) -> list[dict[str, str]]:
    """`text` as segments {"text", "kind"} (kind: "", "cited" or "hallucinated") for the template to escape and mark.

    A title is found as written, as a sentence names it ("Matrix, The (1999)" -> "The Matrix (1999)"), or either
    without its year, case-insensitively; longer forms first."""
    forms: list[tuple[str, str]] = []
    for kind, titles in (("cited", cited), ("hallucinated", hallucinated)):
        for title in titles:
            for form in {title, display_title(title), strip_year(title), front_article(strip_year(title))}:
                if len(form) >= 3:
                    forms.append((form, kind))
    if not forms:
        return [{"text": text, "kind": ""}]
    forms.sort(key=lambda f: len(f[0]), reverse=True)
    pattern = re.compile("|".join(f"(?<!\\w){re.escape(f)}(?!\\w)" for f, _ in forms), re.IGNORECASE)
    kind_of = {f.lower(): k for f, k in reversed(forms)}
    segments, pos = [], 0
    for m in pattern.finditer(text):
        if m.start() > pos:
            segments.append({"text": text[pos : m.start()], "kind": ""})
        segments.append({"text": m.group(0), "kind": kind_of.get(m.group(0).lower(), "cited")})
        pos = m.end()
    if pos < len(text):
        segments.append({"text": text[pos:], "kind": ""})
    return segments


# ------------------------------------------------------------------------------------------------ the page
def cut_text(text: Any, max_chars: int = MAX_TEXT_CHARS) -> str:
    """`text` cut to `max_chars` characters, the last an ellipsis, as prompts cut item text (prompting/sanitize.py)."""
    text = "" if text is None else str(text)
    return text if len(text) <= max_chars else text[: max_chars - 1] + ELLIPSIS


def check_explanations_match(explanations: str, explain_meta: dict[str, Any], run_meta: dict[str, Any]) -> None:
    """Explanations of another dataset are refused (their item ids name other items); ones made under another split,
    candidate file or seed than the runs are shown with a warning."""
    if explain_meta.get("dataset") not in (None, run_meta.get("dataset")):
        raise ValueError(
            f"--explanations {explanations} explains dataset {explain_meta['dataset']!r}, the runs rank "
            f"{run_meta.get('dataset')!r}: pass the `mmrec explain` output of the same data"
        )
    differ = [
        f"{key} {explain_meta[key]} vs {run_meta[key]}"
        for key in ("split", "candidates_hash", "seed")
        if explain_meta.get(key) is not None and run_meta.get(key) is not None and explain_meta[key] != run_meta[key]
    ]
    if differ:
        logger.warning(
            "--explanations %s was made under another protocol than the runs (%s): the explained items may not be "
            "the runs' top items",
            explanations,
            ", ".join(differ),
        )


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _sample_users(spec: str, first_run: list[dict], in_all: set[str]) -> list[str]:
    order = [str(r["user_id"]) for r in first_run if str(r["user_id"]) in in_all]
    if spec.isdigit():
        return order[: int(spec)]
    wanted = [line.strip() for line in Path(spec).read_text(encoding="utf-8").splitlines() if line.strip()]
    missing = [u for u in wanted if u not in in_all]
    if missing:
        raise ValueError(f"--users {spec}: user {missing[0]!r} is not in every run ({len(missing)} missing)")
    return wanted


def build_report(cfg: ReportConfig) -> dict[str, Any]:
    """Compute everything the page shows; returns the template context (also what tests inspect)."""
    from mmrec_gen.data.loaders import load_dataset
    from mmrec_gen.data.split import split_dataset

    labels = cfg.runs_labels or [Path(r).name for r in cfg.runs]
    if len(labels) != len(cfg.runs) or len(set(labels)) != len(labels):
        raise ValueError(f"one distinct label per run is needed; got labels {labels} for {len(cfg.runs)} runs")
    results = [evaluate_file(r) for r in cfg.runs]
    rows = [read_results(r) for r in cfg.runs]
    metas = [res["meta"] for res in results]
    shared = {(m.get("dataset"), m.get("split"), m.get("candidates_hash"), m.get("seed")) for m in metas}
    by_user = [{str(r["user_id"]): r for r in run_rows} for run_rows in rows]
    ranks = [[target_rank(r) for r in run_rows] for run_rows in rows]
    losses = {label: pts for label, run in zip(labels, cfg.runs, strict=True) if (pts := loss_history(run))}
    n_candidates = max(len(r.get("candidates") or []) for run_rows in rows for r in run_rows)

    explain_result, explained = None, {}
    if cfg.explanations:
        explain_result = evaluate_explanation_file(cfg.explanations)
        check_explanations_match(cfg.explanations, explain_result["meta"], metas[0])
        explained = {str(r["user_id"]): r for r in read_results(cfg.explanations)}

    ds = load_dataset(cfg.data, images_dir=cfg.images)
    split = split_dataset(ds)
    thumbs = Thumbnails(cfg.thumb_px)

    def item_view(item_id: str) -> dict[str, Any]:
        item = ds.items.get(str(item_id))
        if item is None:
            raise ValueError(f"item {item_id!r} of a run is not in {cfg.data}: pass the --data the runs were made on")
        return {"id": item.item_id, "title": cut_text(item.title), "genres": cut_text(item.fields.get("genres", "")),
                "src": thumbs(item.image)}  # fmt: skip

    in_all = set.intersection(*(set(u) for u in by_user))
    cards = []
    for uid in _sample_users(cfg.users, rows[0], in_all):
        first = by_user[0][uid]
        split_name = metas[0].get("split") or "test"
        if uid not in split.users:
            raise ValueError(f"user {uid!r} of {cfg.runs[0]} is not in {cfg.data}")
        history, _ = split.users[uid].history_and_target(split_name)
        target = str(first["target"])
        ranking = [str(i) for i in (first.get("ranking") or first.get("candidates") or [])]
        card = {
            "user_id": uid,
            "history": [item_view(h.item_id) for h in history[-cfg.history :]],
            "n_history": len(history),
            "ranking": [{**item_view(i), "target": i == target} for i in ranking],
            "ranking_label": labels[0] if first.get("ranking") else f"{labels[0]} (no valid ranking: display order)",
            "target": item_view(target),
            "ranks": [
                {"run": label, "rank": target_rank(run[uid])} for label, run in zip(labels, by_user, strict=True)
            ],
            "explanation": None,
        }
        why = explained.get(uid)
        if why is not None:
            cited = list(why.get("cited_history") or [])
            card["explanation"] = {
                "item": item_view(why["item_id"]) if why.get("item_id") else None,
                "segments": highlight(why["explanation"], cited, why.get("hallucinated_titles") or [])
                if why.get("explanation")
                else [],
                "error": why.get("error"),
                "evidence": [cut_text(e["title"]) for e in why.get("evidence") or []],
                "cited_title": cut_text(why["cited_title"]) if why.get("cited_title") else None,
            }
        cards.append(card)
    if thumbs.failed:
        logger.warning("%d images could not be read and show as title placeholders", thumbs.failed)

    table = [
        {"label": label, "model": m.get("model"), "mode": m.get("mode"),
         "cells": [{"key": key, "text": _fmt(res.get(key))} for _, key in _METRICS],
         "n_users": res["n_users"], "n_errors": res["n_error_records"]}
        for label, res, m in zip(labels, results, metas, strict=True)
    ]  # fmt: skip
    explain_table = None
    if explain_result is not None:
        explain_table = {
            "file": Path(cfg.explanations).name,
            "protocol": protocol_line(explain_result["meta"]),
            "cells": [{"key": key, "text": _fmt(explain_result.get(key))} for _, key in _EXPLAIN_METRICS],
        }
    return {
        "protocols": [protocol_line({k: metas[0].get(k) for k in ("dataset", "split", "candidates_hash", "seed")})]
        if len(shared) == 1
        else [f"{protocol_line(m)} run={label}" for label, m in zip(labels, metas, strict=True)],
        "comparable": len(shared) == 1,
        "metric_names": [name for name, _ in _METRICS],
        "table": table,
        "explain_metric_names": [name for name, _ in _EXPLAIN_METRICS],
        "explain_table": explain_table,
        "plots": plots(labels, ranks, losses, n_candidates),
        "cards": cards,
        "dataset": ds.name,
    }


def render_report(context: dict[str, Any]) -> str:
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

    env = Environment(
        loader=PackageLoader("mmrec_gen.eval", "templates"),
        autoescape=select_autoescape(["html", "jinja"]),  # titles and explanations are data: always escaped
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env.get_template(TEMPLATE).render(**context)


def write_report(cfg: ReportConfig) -> Path:
    """Build and write the report atomically; returns its path."""
    from mmrec_gen.data.files import check_output_file

    check_output_file(cfg.out)
    html = render_report(build_report(cfg))
    with atomic_write(cfg.out) as fh:
        fh.write(html)
    size = os.path.getsize(cfg.out)
    logger.info("wrote %s (%.1f kB)", cfg.out, size / 1024)
    return Path(cfg.out)
