"""The README's fine-tuning example, run as written: a CSV of image paths and reports, <= 10 lines of YAML."""

import csv
import re
from pathlib import Path

from medvlm.data.synthetic import save_png_tree, synthetic_records
from tiny import ROOT, load_script


def readme_yaml() -> str:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- example:finetune-yaml -->\s*```yaml\n(.*?)```", text, re.S).group(1)
    assert len(block.strip().splitlines()) <= 10
    return block


def test_readme_finetune_example_runs(pretrained, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rows = []
    for split, n, start in (("train", 16, 0), ("validate", 4, 16), ("test", 4, 20)):
        for record in save_png_tree(synthetic_records(n, seed=5, image_size=48, start_index=start), tmp_path / "png"):
            rows.append({"path": Path(record["image"]).name, "report": record["text"], "split": split})
    Path("my_reports").mkdir()
    with open("my_reports/reports.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "report", "split"])
        writer.writeheader()
        writer.writerows(rows)
    for row in rows:
        (tmp_path / "my_reports" / row["path"]).write_bytes((tmp_path / "png" / row["path"]).read_bytes())
    Path("runs/demo").mkdir(parents=True)
    Path("runs/demo/final").symlink_to(pretrained)
    Path("finetune.yaml").write_text(readme_yaml())
    # the README's command, shortened to a few steps
    assert load_script("train").main(["--config", "finetune.yaml", "train.max_steps=2", "train.eval_every=0",
                                      "train.save_every=0", "train.batch_size=8"]) == 0
    assert Path("runs/finetune/final/model.safetensors").is_file()
