"""Typed configs behind `mmrec rank` / scripts/zero_shot.py / scripts/few_shot.py (RankConfig) and
`mmrec explain` / scripts/explain.py (ExplainConfig). Both share RunConfig, built from the shared argument groups (data/data_args.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from mmrec_gen.data.data_args import EvalDataArguments, check_positive
from mmrec_gen.models.model_args import ModelArguments
from mmrec_gen.prompting.prompt_args import PromptArguments

MODES = ("score", "constrained", "generate")


def check_template(template: str, tasks: tuple[str, ...]) -> None:
    """Raise ValueError at parse time (before data or a model load) unless `template` is a manifest id whose task
    is one of `tasks`."""
    from mmrec_gen.prompting.templates import load_manifest

    specs = load_manifest()
    fitting = sorted(t for t, spec in specs.items() if spec.task in tasks)
    if template not in specs:
        raise ValueError(f"--template {template!r} is not a prompt template; choose one of {', '.join(fitting)}")
    if specs[template].task not in tasks:
        raise ValueError(
            f"--template {template!r} is for the {specs[template].task} task; this command takes one of "
            f"{', '.join(fitting)}"
        )


@dataclass(kw_only=True)
class RunConfig(PromptArguments, ModelArguments, EvalDataArguments):
    """What rank and explain share: data and candidates, the model, prompt budgets, batching."""

    out: str = field(metadata={"help": "Output JSONL: one line per user (see README 'Output format')."})
    batch_size: int = field(default=8, metadata={"help": "Prompts per forward pass (length-sorted batches)."})
    backend: str = field(
        default="hf",
        metadata={
            "help": "Inference backend: hf (transformers) or vllm (vLLM: the same modes and parser; needs vLLM "
            "installed, see README 'vLLM backend')."
        },
    )
    merge_adapter: bool = field(
        default=True, metadata={"help": "Merge the adapter into the weights (as fast as the base model)."}
    )
    max_lora_rank: int = field(
        default=64, metadata={"help": "Refuse adapters of a higher LoRA rank (the serving limit, as vLLM's)."}
    )
    progress: bool = field(default=True, metadata={"help": "Show progress bars."})

    def __post_init__(self):
        super().__post_init__()
        check_positive(self, "batch_size")
        from mmrec_gen.rank.backend import backend_names

        if self.backend not in backend_names():
            raise ValueError(f"--backend must be one of {', '.join(backend_names())}, got {self.backend!r}")


@dataclass(kw_only=True)
class RankConfig(RunConfig):
    ranks_all_items = True  # --num-candidates all (with an item-head adapter; checked when the adapter is read)
    mode: str = field(
        default="score",
        metadata={
            "help": "score: label logits (one forward pass); constrained: decoding over unused labels; "
            "generate: free text parsed back to candidates."
        },
    )
    template: str | None = field(
        default=None,
        metadata={
            "help": "Prompt template id (mmrec prompts list); default rank_listwise or "
            "rank_fewshot when --shots > 0; 'pointwise' scores each candidate Yes/No."
        },
    )
    shots: int = field(default=0, metadata={"help": "In-context demonstrations from other users' training data."})
    max_new_tokens: int | None = field(
        default=None, metadata={"help": "Generate mode answer length; default 3 x candidates + 8."}
    )
    overwrite: bool = field(
        default=False,
        metadata={
            "help": "Start --out over. Without it, the same command after a kill continues from the last complete "
            "chunk of rows (<out>.run.json holds the run's config), and a run with other options is refused."
        },
    )
    permutations: int = field(
        default=1,
        metadata={
            "help": "Score mode, listwise templates: average each candidate's label log-probability over this many "
            "display orders (the file's order, then shuffles seeded by (seed, user id, k)) against position bias."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if self.mode not in MODES:
            raise ValueError(f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.shots < 0:
            raise ValueError(f"--shots must be >= 0, got {self.shots}")
        if self.template is None:
            self.template = "rank_fewshot" if self.shots > 0 else "rank_listwise"
        check_template(self.template, ("rank", "pointwise"))
        if self.template == "pointwise" and self.mode != "score":
            raise ValueError("the pointwise template scores each candidate Yes/No: use it with --mode score")
        if self.permutations < 1:
            raise ValueError(f"--permutations must be >= 1, got {self.permutations}")
        if self.permutations > 1 and (self.mode != "score" or self.template == "pointwise"):
            raise ValueError(
                f"--permutations {self.permutations} averages label scores over candidate orders: it needs "
                f"--mode score with a listwise template, got --mode {self.mode} --template {self.template}; "
                "pass --permutations 1 or switch to --mode score"
            )
        if self.max_new_tokens is None:
            self.max_new_tokens = 3 * self.num_candidates + 8
        check_positive(self, "max_new_tokens")


@dataclass(kw_only=True)
class ExplainConfig(RunConfig):
    ranking: str | None = field(
        default=None,
        metadata={
            "help": "A `mmrec rank` JSONL whose top-ranked item gets explained; default: rank in score mode first."
        },
    )
    template: str = field(default="explain", metadata={"help": "Explanation template id."})
    max_new_tokens: int = field(default=64, metadata={"help": "Explanation length in tokens."})
    grounded: bool = field(
        default=True,
        metadata={
            "help": "List the history items most related to the recommended item as evidence in the prompt, and "
            "pick the cited title among them by constrained decoding before the model writes the rest; false: "
            "free generation."
        },
    )
    num_evidence: int = field(default=3, metadata={"help": "Evidence items listed (and choices for the citation)."})

    def __post_init__(self):
        super().__post_init__()
        check_template(self.template, ("explain",))
        check_positive(self, "num_evidence", "max_new_tokens")
