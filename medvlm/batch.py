"""What batch commands (generate, label, retrieve, prepare, eval) share: one bad item never costs
the others. Each item's work runs through `BadItems.attempt`; a user-input error (a truncated
image, a row without text) names the item and its reason and the command goes on, unless
`--strict`. Results are streamed as they are made (`JsonlStream`), so a crash at item 900 keeps
the 899 before it; the command ends with a count and a non-zero exit status if any item failed."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Callable, TextIO

from .errors import UserError

EXIT_SOME_FAILED = 1  # some items failed, the others' results are written (2 stays "user error, nothing done")


class BadItems:
    """The items a command could not process, with their reasons, counted by reason."""

    def __init__(self, command: str, strict: bool = False, stream: TextIO | None = None):
        self.command, self.strict = command, strict
        self.stream = stream if stream is not None else sys.stderr
        self.failed: list[tuple[str, str]] = []  # (item, message)
        self.reasons: Counter = Counter()

    def attempt(self, item: str, work: Callable[[], Any]) -> tuple[bool, Any]:
        """(True, work()) or, when it raises a UserError, (False, None) after naming `item`;
        with `strict` the error propagates instead."""
        try:
            return True, work()
        except UserError as error:
            if self.strict:
                raise
            self.add(item, str(error), getattr(error, "reason", None) or type(error).__name__)
            return False, None

    def add(self, item: str, message: str, reason: str = "error") -> None:
        self.failed.append((item, message))
        self.reasons[reason] += 1
        named = message if message.startswith(item) else f"{item}: {message}"  # errors often name it already
        print(f"medvlm {self.command}: skipped {named}", file=self.stream)

    def summary(self, done: int) -> str:
        """'19 done, 1 failed (unreadable_file: 1)' style closing line."""
        if not self.failed:
            return f"medvlm {self.command}: {done} done, 0 failed"
        counts = ", ".join(f"{reason}: {n}" for reason, n in sorted(self.reasons.items()))
        return f"medvlm {self.command}: {done} done, {len(self.failed)} failed ({counts})"

    def finish(self, done: int) -> int:
        """Print the summary; the command's exit status."""
        print(self.summary(done), file=self.stream)
        return EXIT_SOME_FAILED if self.failed else 0

    def as_metrics(self, prefix: str = "skipped") -> dict:
        """{'skipped': N, 'skipped.<reason>': n, ...} for metrics.json / run_info.json."""
        return {prefix: len(self.failed), **{f"{prefix}.{r}": n for r, n in sorted(self.reasons.items())}}


class JsonlStream:
    """One JSON object a line to a file (or stdout), flushed as each is written."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None
        self.file = open(self.path, "w", encoding="utf-8") if self.path else sys.stdout
        self.count = 0

    def write(self, row: dict) -> None:
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        self.count += 1

    def close(self) -> None:
        if self.path:
            self.file.close()

    def __enter__(self) -> "JsonlStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
