"""Train a MedVLM model: `python train.py --config configs/demo.yaml [section.key=value ...]`."""

import sys

from medvlm.cli import run


def main(argv: list[str] | None = None) -> int:
    """`medvlm train`: a user error (bad config key, missing file) is one line and exit status 2."""
    return run("train", argv)


if __name__ == "__main__":
    sys.exit(main())
