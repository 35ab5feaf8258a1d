"""Supervised fine-tuning of a LoRA adapter for ranking (the options of `mmrec train sft`).

python scripts/train_sft.py --config configs/sft_smollm2_cpu.yaml --data ../shared/data/ml-latest-small \
    --output-dir runs/sft
"""

from __future__ import annotations

import sys


def make_parser():
    from mmrec_gen.cli_args import make_parser as config_parser
    from mmrec_gen.train.config import SFTTrainConfig

    return config_parser(SFTTrainConfig, "train_sft.py", __doc__.split("\n\n")[0])


def main(cfg) -> int:
    from mmrec_gen.cli import setup_logging
    from mmrec_gen.cli_train import train_and_report

    setup_logging()
    return train_and_report("sft", cfg)


if __name__ == "__main__":
    raise SystemExit(main(make_parser().parse_config(sys.argv[1:])))
