"""Supervised fine-tuning of a LoRA adapter for ranking (the options of `mmrec train sft`).

python scripts/train_sft.py --config configs/sft_smollm2_cpu.yaml --data ../shared/data/ml-latest-small \
    --output-dir runs/sft
"""

from __future__ import annotations

import sys


def parse(argv):
    from mmrec_gen.cli_args import parse_config
    from mmrec_gen.train.config import SFTTrainConfig

    return parse_config(SFTTrainConfig, argv, "train_sft.py", __doc__.split("\n\n")[0])


def main(cfg) -> int:
    from mmrec_gen.cli import _setup_logging
    from mmrec_gen.cli_train import train_and_report

    _setup_logging()
    return train_and_report("sft", cfg)


if __name__ == "__main__":
    raise SystemExit(main(parse(sys.argv[1:])))
