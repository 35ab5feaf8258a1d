"""From a RankConfig to a results file, in three parts: the plan (data, split, candidate file, tasks:
`plan_rank`), the worker (model, backend and Ranker from a picklable spec: rank/worker.py) and the writer (a
resumable JSONL: rank/resume.py). Batch jobs (mmrec_gen/jobs/) reuse the plan and the worker with their own writer.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

from mmrec_gen.data.files import check_output_file
from mmrec_gen.data.inputs import RunInputs, inputs_for, run_meta
from mmrec_gen.data.schema import CandidateRow, Dataset
from mmrec_gen.prompting.render import HistoryEntry, PromptBuilder
from mmrec_gen.rank.fewshot import select_demos
from mmrec_gen.rank.rank_config import ExplainConfig, RankConfig
from mmrec_gen.rank.ranker import Ranker, UserTask
from mmrec_gen.rank.resume import ResumableResults
from mmrec_gen.rank.worker import RankWorkerSpec, build_ranker, load_run_model

logger = logging.getLogger(__name__)

# Users per results chunk, in batches: a kill loses at most one chunk of ranking work.
CHUNK_BATCHES = 4


def history_entries(ds: Dataset, interactions) -> list[HistoryEntry]:
    return [HistoryEntry(ds.items[i.item_id], i.rating) for i in interactions]


def build_task(inputs: RunInputs, row: CandidateRow, *, split: str, shots: int = 0, seed: int = 0) -> UserTask:
    """One user's task: history (before the `split` target), candidates, target and few-shot demos."""
    ds, split_result = inputs.dataset, inputs.split_result
    history, _ = split_result.users[row.user_id].history_and_target(split)
    demos = (
        select_demos(
            ds, split_result, row.user_id, shots=shots, seed=seed, num_candidates=inputs.candidate_file.num_candidates
        )
        if shots
        else ()
    )
    return UserTask(
        row.user_id, history_entries(ds, history), [ds.items[c] for c in row.candidates], row.target, demos
    )


def build_tasks(
    inputs: RunInputs, *, split: str, max_users: int | None, shots: int = 0, seed: int = 0
) -> list[UserTask]:
    rows = inputs.candidate_file.rows
    rows = rows[:max_users] if max_users else rows
    return [build_task(inputs, row, split=split, shots=shots, seed=seed) for row in rows]


@dataclass
class RankPlan:
    """The plan side of a ranking run: its config (with an item-token adapter's prompt options applied), the
    inputs (data, split, candidate file) and the worker spec that ranks them in any process."""

    config: RankConfig
    inputs: RunInputs
    worker: RankWorkerSpec


def plan_rank(cfg: RankConfig) -> RankPlan:
    """Check the options against the adapter, load data, split and candidate file; no model is loaded here."""
    from mmrec_gen.rank.item_rank import apply_adapter_options, check_item_model_data, item_token_config

    # An item-token model fixes its head, template and prompt budgets: nothing else needs to be passed.
    item_config = item_token_config(cfg)
    mode = cfg.mode
    if item_config:
        cfg = apply_adapter_options(cfg, item_config)
        if cfg.mode != "score" or cfg.shots:
            raise ValueError(f"{item_config['folder']}: an item-token model ranks in score mode without shots")
        mode = "items" if item_config["head"] == "items" else "score"
    if cfg.all_candidates and mode != "items":
        raise ValueError(
            "--num-candidates all ranks the whole catalogue with the item head, which scores items without showing "
            "them: pass an --adapter trained with `mmrec train sft --item-tokens ... --head items` (labels and "
            "generated answers need the candidates in the prompt, at most 26)"
        )
    inputs = inputs_for(cfg)
    if item_config:
        check_item_model_data(cfg, item_config, inputs.dataset)
    meta = run_meta(inputs, model=None, mode=cfg.mode, template=cfg.template, shots=cfg.shots)
    if item_config:
        meta = {**meta, "head": item_config["head"], "item_tokens": item_config["sources"]}
    catalogue = sorted({item.title for item in inputs.dataset.items.values()}) if cfg.mode == "generate" else ()
    spec = RankWorkerSpec(
        config=cfg,
        mode=mode,
        meta=meta,
        num_candidates=inputs.candidate_file.num_candidates,
        catalogue_titles=tuple(catalogue),
        item_config=item_config,
    )
    return RankPlan(cfg, inputs, spec)


def run_rank(cfg: RankConfig, loaded_model=None) -> list[dict]:
    """Rank every user of the candidate file (or the first --max-users) into cfg.out, continuing a killed run of
    the same config (see rank/resume.py); returns the rows."""
    check_output_file(cfg.out)
    plan = plan_rank(cfg)
    cfg, inputs = plan.config, plan.inputs
    tasks = build_tasks(inputs, split=cfg.split, max_users=cfg.max_users, shots=cfg.shots, seed=cfg.seed)
    chunk = CHUNK_BATCHES * cfg.batch_size
    # The writer: rows are appended per chunk next to a config sidecar, so a killed run continues.
    results = ResumableResults(cfg.out, rank_fingerprint(cfg, inputs), chunk=chunk, overwrite=cfg.overwrite)
    rows = results.start([t.user_id for t in tasks])
    todo = tasks[len(rows) :]
    if todo:
        ranker = build_ranker(plan.worker, loaded_model=loaded_model, inputs=inputs)
        try:
            # Chunks start at multiples of `chunk` from the first user, resumed or not: the same batches, the same rows.
            for start in range(0, len(todo), chunk):
                ranked = ranker.rank(todo[start : start + chunk])
                results.append(ranked)
                rows.extend(ranked)
        finally:
            results.close()
    results.finish()
    n_err = sum(1 for r in rows if r["error"])
    logger.info("wrote %d rows (%d error rows) to %s", len(rows), n_err, cfg.out)
    return rows


RUN_ONLY_OPTIONS = frozenset({"out", "progress", "overwrite", "cache_dir"})


def rank_fingerprint(cfg: RankConfig, inputs: RunInputs, skip: frozenset[str] = RUN_ONLY_OPTIONS) -> dict:
    """What decides a ranking run's rows: a resumed run must match it (every option but `skip`: where the output
    and the candidate cache go, and progress bars), plus the candidate file's content hash."""
    options = {k: v for k, v in asdict(cfg).items() if k not in skip}
    return {**options, "candidates_hash": inputs.candidate_file.content_hash}


def run_explain(cfg: ExplainConfig, loaded_model=None) -> list[dict]:
    """Explain each user's top-ranked item (from cfg.ranking, or from a score-mode ranking made here)."""
    from mmrec_gen.data.results import read_results, write_results
    from mmrec_gen.rank.backend import create_backend
    from mmrec_gen.rank.explain import explain, explanation_summary, genre_vocabulary
    from mmrec_gen.rank.item_rank import item_token_config
    from mmrec_gen.rank.titles import normalize_title

    check_output_file(cfg.out)
    if item_token_config(cfg):
        raise ValueError(
            f"{item_token_config(cfg)['folder']}: explanations with an item-token model are not supported yet"
        )
    inputs = inputs_for(cfg)
    tasks = build_tasks(inputs, split=cfg.split, max_users=cfg.max_users)
    if cfg.ranking:
        ranked = {r["user_id"]: r for r in read_results(cfg.ranking)}
        missing = [t.user_id for t in tasks if t.user_id not in ranked]
        if missing:
            raise ValueError(f"{cfg.ranking}: no ranking for user {missing[0]} ({len(missing)} users missing)")
        hashes = {r.get("meta", {}).get("candidates_hash") for r in ranked.values()}
        if hashes != {inputs.candidate_file.content_hash}:
            raise ValueError(
                f"{cfg.ranking} ranks candidate file(s) {sorted(map(str, hashes))}, but this run uses "
                f"{inputs.candidate_file.path}: pass the same --split/--seed/--num-candidates (or --candidates)"
            )
    loaded = load_run_model(cfg, inputs, loaded_model)
    backend = create_backend(cfg.backend, loaded, batch_size=cfg.batch_size, progress=cfg.progress, config=cfg)
    if not cfg.ranking:
        builder = PromptBuilder.from_options(loaded.tokenizer, "rank_listwise", cfg, 1)
        meta = run_meta(inputs, model=loaded.name, mode="score", template="rank_listwise", shots=0)
        ranked = {r["user_id"]: r for r in Ranker(backend, builder, "score", meta=meta).rank(tasks)}
    ds = inputs.dataset
    kept = [t for t in tasks if ranked[t.user_id].get("ranking")]
    top_items = [ds.items[ranked[t.user_id]["ranking"][0]] for t in kept]
    builder = PromptBuilder.from_options(loaded.tokenizer, cfg.template, cfg, cfg.max_new_tokens)
    catalogue = {normalize_title(item.title): item.title for item in ds.items.values()}
    meta = run_meta(inputs, model=loaded.name, mode="explain", template=cfg.template, shots=0)
    meta = {**meta, "grounded": cfg.grounded, "genres": genre_vocabulary(ds.items.values())}
    explained = explain(
        backend, builder, kept, top_items, catalogue=catalogue, max_new_tokens=cfg.max_new_tokens, meta=meta,
        num_evidence=cfg.num_evidence, grounded=cfg.grounded,
    )  # fmt: skip
    by_user = {row["user_id"]: row for row in explained}
    # Users whose ranking was an error row still get a row naming them, in candidate-file order.
    rows = [
        by_user.get(task.user_id)
        or {
            "user_id": task.user_id,
            "item_id": None,
            "explanation": None,
            "target": task.target,
            "error": f"no ranking: {ranked[task.user_id].get('error')}",
            "meta": meta,
        }
        for task in tasks
    ]
    write_results(cfg.out, rows)
    logger.info("explanations: %s", explanation_summary(rows))
    return rows
