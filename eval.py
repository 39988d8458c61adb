"""Evaluate a trained model: `python eval.py --checkpoint runs/demo/final [eval.key=value ...]`."""

import sys

from medvlm.cli import eval_main


def main(argv: list[str] | None = None) -> int:
    return eval_main(argv)


if __name__ == "__main__":
    sys.exit(main())
