"""`mmrec baseline pop|sasrec|mse`: a classic recommender ranks the same candidate file as the LLMs -> JSONL."""

from __future__ import annotations

from collections.abc import Sequence

USAGE = """usage: mmrec baseline {pop,sasrec,mse} --data DIR --out FILE.jsonl [options]   (--help after the name)

  pop     most popular items of the train split (ties by item id)
  sasrec  SASRec self-attentive sequential recommender (compact PyTorch), early-stopped on the monitor items
  mse     MSE regression head on frozen text (and --images) embeddings; --finetune-encoder tunes the encoder
"""


def cmd_baseline(argv: Sequence[str]) -> int:
    argv = list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    from mmrec_gen.cli_args import parse_config
    from mmrec_gen.recsys.baselines import BASELINES, CONFIGS, run_baseline

    name = argv[0]
    if name not in CONFIGS:
        raise ValueError(f"unknown baseline {name!r}: choose one of {', '.join(BASELINES)}")
    cfg = parse_config(
        CONFIGS[name], argv[1:], f"mmrec baseline {name}", USAGE.splitlines()[2 + BASELINES.index(name)]
    )
    run = run_baseline(name, cfg)
    from mmrec_gen.eval.metrics import ranking_metrics
    from mmrec_gen.eval.report import rating_summary

    m = ranking_metrics(run.rows)
    line = (
        f"{cfg.out}: {name}, {m['n_users']} users, HR@1 {m['hr@1']:.4f}, NDCG@10 {m['ndcg@10']:.4f}, "
        f"error rows {m['n_error_records']}, train {run.train_seconds:.1f} s, score {run.score_seconds:.1f} s"
    )
    ratings = rating_summary(run.rows)
    if ratings:
        line += (
            f", RMSE {ratings['rmse']:.4f} (global mean {ratings['rmse_global_mean']:.4f}), MAE {ratings['mae']:.4f}"
        )
    print(line)
    return 0
