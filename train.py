"""Train a MedVLM model: `python train.py --config configs/demo.yaml [section.key=value ...]`."""

import sys

from medvlm.cli import train_main


def main(argv: list[str] | None = None) -> int:
    return train_main(argv)


if __name__ == "__main__":
    sys.exit(main())
