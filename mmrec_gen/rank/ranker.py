"""The three ranking modes over one backend: score, constrained, generate.

Every user ends as a result row or an error row that names it. The gold target is only copied into the row:
prompts, decoding and parsing never see it (R2).

Score mode with `permutations` P > 1 (LLMRank-style debiasing of the label verbalizer) renders each user's
candidates in P display orders, turns each order's label logits into log-probabilities over the candidate labels
and ranks by each candidate's mean log-probability, so no item wins merely by being shown as "A".
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from mmrec_gen.data.images import BadImageError
from mmrec_gen.data.rows import ERROR_KEYS, ResultRow, catalogue_row, rank_by_scores
from mmrec_gen.data.schema import Item
from mmrec_gen.data.seeding import rng_for
from mmrec_gen.prompting.labels import label_token_ids
from mmrec_gen.prompting.render import Demo, HistoryEntry, PromptBuilder, RenderedPrompt
from mmrec_gen.rank.backend import BackendError, LabelVocab, RankBackend
from mmrec_gen.rank.parsing import CandidateView, parse_ranking

logger = logging.getLogger(__name__)

YES_NO = ("Yes", "No")


@dataclass
class UserTask:
    user_id: str
    history: Sequence[HistoryEntry]
    candidates: Sequence[Item]
    target: str
    demos: Sequence[Demo] = field(default_factory=tuple)


def label_vocab(tokenizer, labels: Sequence[str], separator: str = ", ") -> LabelVocab:
    """Token ids of each label as the first answer token and after the separator (", C")."""
    first = label_token_ids(tokenizer, labels)
    seps, cont = set(), []
    for label in labels:
        ids = tokenizer.encode(separator + label, add_special_tokens=False)
        if len(ids) < 2 or tokenizer.decode(ids[-1:]).strip() != label:
            raise ValueError(
                f"label {label!r} after {separator!r} is not one token for this tokenizer ({ids}); "
                "constrained decoding needs it: use --mode score or generate"
            )
        seps.add(tuple(ids[:-1]))
        cont.append(ids[-1])
    if len(seps) != 1:
        raise ValueError(f"the separator {separator!r} tokenizes differently before different labels: {seps}")
    return LabelVocab(tuple(first), tuple(cont), seps.pop())


def display_orders(seed: int, user_id: str, num_candidates: int, permutations: int) -> list[list[int]]:
    """The candidate display orders scored for one user, as indices into the candidate file's order.

    Order 0 is the file's own order (so P=1 is the plain score mode); order k >= 1 is a shuffle seeded by
    (seed, user id, k) only, never by the batch or the other users in the run (R10).
    """
    orders = [list(range(num_candidates))]
    for k in range(1, permutations):
        orders.append(rng_for(seed, "rank-permutation", user_id, k).permutation(num_candidates).tolist())
    return orders


def label_log_probs(logits: Sequence[float]) -> list[float]:
    """Log-softmax over the candidate labels' logits: each order's scores become comparable log-probabilities."""
    top = max(logits)
    log_total = top + math.log(math.fsum(math.exp(x - top) for x in logits))
    return [x - log_total for x in logits]


class Ranker:
    def __init__(
        self,
        backend: RankBackend,
        builder: PromptBuilder,
        mode: str,
        *,
        meta: dict,
        max_new_tokens: int = 68,
        catalogue_titles: Sequence[str] = (),
        permutations: int = 1,
        seed: int = 0,
    ):
        self.backend = backend
        self.builder = builder
        self.mode = mode
        self.max_new_tokens = max_new_tokens
        self.pointwise = builder.spec.task == "pointwise"
        if permutations < 1 or (permutations > 1 and (mode != "score" or self.pointwise)):
            raise ValueError(
                f"permutations={permutations}: must be >= 1, and > 1 only in score mode with a listwise template "
                f"(got mode {mode!r}, template {builder.spec.id!r})"
            )
        self.permutations = permutations
        self.seed = seed
        # P=1 rows stay byte-identical to the plain score mode, so the field is only added when it means something.
        self.meta = meta if permutations == 1 else {**meta, "permutations": permutations}
        # Titles of the whole catalogue let the parser count out-of-candidate titles in generate mode.
        self.catalogue_titles = tuple(catalogue_titles)

    # -- rows -------------------------------------------------------------------------------------------
    def _row(self, task: UserTask, **values) -> dict:
        candidates = [c.item_id for c in task.candidates]
        row = ResultRow(task.user_id, candidates, task.target, self.meta, **values).to_dict()
        return catalogue_row(row) if self.meta.get("candidates") == "all" else row

    def _error_row(self, task: UserTask, message: str, prompt: RenderedPrompt | None = None) -> dict:
        logger.warning("user %s: %s", task.user_id, message)
        extra = {"truncated": prompt.truncated, "n_history": prompt.n_history_used} if prompt else {}
        return self._row(task, error=message, **extra)

    def _scored_row(self, task: UserTask, candidate_ids, scores, prompts: Sequence[RenderedPrompt]) -> dict:
        """A valid row ranked by per-candidate `scores` (in candidate-file order) from `prompts`; an error row when a
        score is NaN or infinite (a NaN sorts anywhere: the "ranking" would be the display order, and the file
        would hold bare NaN, which is not JSON)."""
        scores = [float(s) for s in scores]
        bad = [s for s in scores if not math.isfinite(s)]
        if bad:
            message = (
                f"non-finite scores ({bad[0]}) for {len(bad)} of {len(scores)} candidates: the model computed NaN or "
                "infinite logits (weights or adapter holding NaN, or an fp16 overflow: try --dtype float32); "
                "nothing was ranked for this user"
            )
            return self._error_row(task, message, prompts[0])
        return self._row(
            task,
            ranking=rank_by_scores(candidate_ids, scores),
            valid=True,
            scores=scores,
            truncated=any(p.truncated for p in prompts),
            n_history=min(p.n_history_used for p in prompts),
        )

    # -- prompts ----------------------------------------------------------------------------------------
    def _build(self, task: UserTask) -> RenderedPrompt | list[RenderedPrompt]:
        if self.pointwise:
            return [self.builder.pointwise(task.user_id, task.history, item) for item in task.candidates]
        if self.permutations > 1:
            orders = display_orders(self.seed, task.user_id, len(task.candidates), self.permutations)
            return [
                self.builder.rank(task.user_id, task.history, [task.candidates[j] for j in order], task.demos)
                for order in orders
            ]
        return self.builder.rank(task.user_id, task.history, task.candidates, task.demos)

    def rank(self, tasks: Sequence[UserTask]) -> list[dict]:
        rows: list[dict | None] = [None] * len(tasks)
        built: list[tuple[int, RenderedPrompt | list[RenderedPrompt]]] = []
        for i, task in enumerate(tasks):
            try:
                built.append((i, self._build(task)))
            except BadImageError:  # only raised under --on-bad-image fail, which means: stop the run, naming the file
                raise
            except (ValueError, KeyError) as exc:  # over-long prompt, missing template field: this user only
                rows[i] = self._error_row(task, f"{type(exc).__name__}: {exc}")
        if self.pointwise:
            self._run_pointwise(tasks, built, rows)
        elif self.mode == "items":
            self._run_items(tasks, built, rows)
        elif self.mode == "score":
            self._run_score(tasks, built, rows)
        elif self.mode == "constrained":
            self._run_constrained(tasks, built, rows)
        else:
            self._run_generate(tasks, built, rows)
        assert all(r is not None for r in rows), "every user must end as a result or an error row"
        return rows  # type: ignore[return-value]

    # -- modes ------------------------------------------------------------------------------------------
    def _logits_per_user(self, built, token_ids) -> list[tuple[int, list[RenderedPrompt], list]]:
        """All users' prompts go through the backend as one list (batched together); the outputs come back
        regrouped per user as (task index, prompts, one output per prompt)."""
        groups = [(i, prompts if isinstance(prompts, list) else [prompts]) for i, prompts in built]
        outputs = iter(self.backend.label_logits([p for _, prompts in groups for p in prompts], token_ids))
        return [(i, prompts, [next(outputs) for _ in prompts]) for i, prompts in groups]

    def _run_score(self, tasks, built, rows) -> None:
        if not built:
            return
        first = built[0][1]
        labels = (first[0] if isinstance(first, list) else first).labels
        for i, prompts, outs in self._logits_per_user(built, label_token_ids(self.backend.tokenizer, labels)):
            failed = [(k, o) for k, o in enumerate(outs) if isinstance(o, BackendError)]
            if failed:
                k, err = failed[0]
                where = f"permutation {k} of {len(prompts)}: " if len(prompts) > 1 else ""
                rows[i] = self._error_row(tasks[i], f"{where}{err}", prompts[0])
                continue
            candidate_ids = [c.item_id for c in tasks[i].candidates]
            if len(prompts) == 1:
                scores = outs[0][: len(candidate_ids)]  # the raw label logits, as the plain score mode always gave
            else:
                # Per candidate item: its label log-probability in each display order, summed in order k = 0..P-1.
                total = dict.fromkeys(candidate_ids, 0.0)
                for prompt, out in zip(prompts, outs, strict=True):
                    log_probs = label_log_probs(out[: len(prompt.candidate_ids)])
                    for item_id, log_prob in zip(prompt.candidate_ids, log_probs, strict=True):
                        total[item_id] += log_prob
                scores = [total[c] / len(prompts) for c in candidate_ids]
            rows[i] = self._scored_row(tasks[i], candidate_ids, scores, prompts)

    def _run_items(self, tasks, built, rows) -> None:
        """Item head: each candidate's score is the answer state . its item token, whatever its display position."""
        if not built:
            return
        outputs = self.backend.item_scores([p for _, p in built])
        for (i, prompt), out in zip(built, outputs, strict=True):
            if isinstance(out, BackendError):
                rows[i] = self._error_row(tasks[i], str(out), prompt)
                continue
            rows[i] = self._scored_row(tasks[i], prompt.candidate_ids, out, [prompt])

    def _run_pointwise(self, tasks, built, rows) -> None:
        if not built:
            return
        for i, prompts, outs in self._logits_per_user(built, label_token_ids(self.backend.tokenizer, YES_NO)):
            failed = [o for o in outs if isinstance(o, BackendError)]
            if failed:
                rows[i] = self._error_row(tasks[i], str(failed[0]), prompts[0])
                continue
            scores = [o[0] - o[1] for o in outs]  # log-odds of Yes over No for each candidate
            candidate_ids = [c.item_id for c in tasks[i].candidates]
            rows[i] = self._scored_row(tasks[i], candidate_ids, scores, prompts)

    def _run_constrained(self, tasks, built, rows) -> None:
        if not built:
            return
        labels = built[0][1].labels
        vocab = label_vocab(self.backend.tokenizer, labels)
        outputs = self.backend.constrained_rank([p for _, p in built], vocab)
        for (i, prompt), out in zip(built, outputs, strict=True):
            if isinstance(out, BackendError):
                rows[i] = self._error_row(tasks[i], str(out), prompt)
                continue
            rows[i] = self._row(
                tasks[i],
                ranking=[prompt.candidate_ids[k] for k in out],
                valid=True,
                raw_output=", ".join(labels[k] for k in out),
                truncated=prompt.truncated,
                n_history=prompt.n_history_used,
            )

    def _run_generate(self, tasks, built, rows) -> None:
        if not built:
            return
        outputs = self.backend.generate([p for _, p in built], self.max_new_tokens)
        for (i, prompt), out in zip(built, outputs, strict=True):
            if isinstance(out, BackendError):
                rows[i] = self._error_row(tasks[i], str(out), prompt)
                continue
            task = tasks[i]
            views = [
                CandidateView(c.item_id, lab, c.title) for c, lab in zip(task.candidates, prompt.labels, strict=True)
            ]
            parsed = parse_ranking(
                out, views, history_titles=[h.item.title for h in task.history], catalogue_titles=self.catalogue_titles
            )
            rows[i] = self._row(
                task,
                ranking=parsed.ranking,
                valid=parsed.valid,
                raw_output=out,
                errors={k: int(parsed.errors.get(k, 0)) for k in ERROR_KEYS},
                truncated=prompt.truncated,
                n_history=prompt.n_history_used,
            )
