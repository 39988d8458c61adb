"""Fixtures shared by the test modules (plain constants and helpers live in tiny.py)."""

import pytest

from tiny import ROOT, TINY, load_script


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A tiny model trained for two steps on the demo preset: its `final` directory."""
    out = tmp_path_factory.mktemp("pre")
    assert load_script("train").main(["--config", str(ROOT / "configs/demo.yaml"), f"train.output_dir={out}",
                                      "train.max_steps=2", "train.eval_every=0", "train.save_every=0", *TINY]) == 0
    return out / "final"
