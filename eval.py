"""Evaluate a trained model: `python eval.py --checkpoint runs/demo/final [eval.key=value ...]`."""

import sys

from medvlm.cli import run


def main(argv: list[str] | None = None) -> int:
    """`medvlm eval`: a user error (missing checkpoint, bad config key) is one line and exit status 2."""
    return run("eval", argv)


if __name__ == "__main__":
    sys.exit(main())
