"""DPO (S-DPO with several negatives) of a LoRA adapter, from an SFT adapter (the options of `mmrec train dpo`).

python scripts/train_dpo.py --config configs/dpo_smollm2_cpu.yaml --data ../shared/data/ml-latest-small \
    --adapter runs/sft --output-dir runs/dpo
"""

from __future__ import annotations

import sys


def make_parser():
    from mmrec_gen.cli_args import make_parser as config_parser
    from mmrec_gen.train.config import DPOTrainConfig

    return config_parser(DPOTrainConfig, "train_dpo.py", __doc__.split("\n\n")[0])


def main(cfg) -> int:
    from mmrec_gen.cli import setup_logging
    from mmrec_gen.cli_train import train_and_report

    setup_logging()
    return train_and_report("dpo", cfg)


if __name__ == "__main__":
    raise SystemExit(main(make_parser().parse_config(sys.argv[1:])))
