"""The code's shape, as the architecture notes promise it: short functions, and no code outside
`medvlm/modeling/` reaching into a model's submodules instead of its public methods."""

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "medvlm"
MAX_BODY_LINES = 60


def long_functions(root: Path = PACKAGE, limit: int = MAX_BODY_LINES) -> list[str]:
    """'path:line name (N lines)' for every function whose body (docstring excluded) is over `limit` lines."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                body = body[1:]
            if body and body[-1].end_lineno - body[0].lineno + 1 > limit:
                lines = body[-1].end_lineno - body[0].lineno + 1
                found.append(f"{path.relative_to(root.parent)}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_no_function_body_over_60_lines():
    assert long_functions() == []


def test_long_function_finder_finds_one(tmp_path):
    (tmp_path / "m.py").write_text("def f():\n    '''doc'''\n" + "    x = 1\n" * 61)
    assert long_functions(tmp_path) == [f"{tmp_path.name}/m.py:1 f (61 lines)"]


def test_only_modeling_reaches_into_model_submodules():
    reach = re.compile(r"\.model\.(vision|text|fusion|encode)")
    hits = [f"{path.relative_to(PACKAGE.parent)}:{number}: {line.strip()}"
            for path in sorted(PACKAGE.rglob("*.py")) if "modeling" not in path.relative_to(PACKAGE).parts
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
            if reach.search(line)]
    assert hits == []
