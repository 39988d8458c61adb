"""Train each `configs/pretrained/` preset for a few steps with random weights of the real sizes.

The presets name hub checkpoints this machine cannot download. This writes random-weight
stand-ins of exactly those architectures in their real on-disk formats (RAD-DINO: a
transformers Dinov2 ViT-B/14 at 518 px; GPT-2 124M; BiomedCLIP: an open_clip checkpoint with a
timm ViT-B/16 trunk; Qwen2.5-0.5B), points the preset's `pretrained_path`s at them, and runs
`train.py` as written except for the data (the built-in synthetic set), the step count and the
batch size. It prints each preset's seconds per step, samples/s and peak memory (max RSS of the
training process) and writes them to benchmarks/results/<machine>_presets.json.

    python benchmarks/bench_presets.py                 # 20 steps each, batch 2
    python benchmarks/bench_presets.py --steps 3 --batch-size 1 --presets biomedclip_qwen2_lora_vqa
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import finish_machine, machine  # noqa: E402

# public architecture facts of the checkpoints the presets name
RAD_DINO = dict(model_type="dinov2", hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                intermediate_size=3072, patch_size=14, image_size=518, layerscale_value=1.0)
RAD_DINO_PREPROCESSOR = {"image_processor_type": "BitImageProcessor", "image_mean": [0.5307] * 3,
                         "image_std": [0.2583] * 3, "crop_size": {"height": 518, "width": 518},
                         "size": {"shortest_edge": 518}, "do_center_crop": True}
GPT2 = dict(model_type="gpt2")  # transformers' GPT2Config defaults are GPT-2 small's (124M)
QWEN25_05B = dict(model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                  num_attention_heads=14, num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768,
                  rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True)
BIOMEDCLIP = {
    "model_cfg": {"embed_dim": 512,
                  "vision_cfg": {"timm_model_name": "vit_base_patch16_224", "timm_model_pretrained": False,
                                 "timm_pool": "", "timm_proj": "linear", "image_size": 224},
                  "text_cfg": {"hf_model_name": "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract",
                               "hf_tokenizer_name": "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract",
                               "hf_proj_type": "mlp", "hf_pooler_type": "cls_last_hidden_state_pooler",
                               "context_length": 256}},
    "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]},
}
WORDS = ("no acute cardiopulmonary process . heart size is normal . the lungs are clear . there is a small left "
         "right pleural effusion . mild moderate cardiomegaly with lower upper lobe opacity pneumothorax edema "
         "consolidation atelectasis support devices tube line is there an ? yes no").split()


def write_rad_dino(folder: Path) -> Path:
    from transformers import AutoConfig, Dinov2Model

    fields = dict(RAD_DINO)
    Dinov2Model(AutoConfig.for_model(fields.pop("model_type"), **fields)).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(RAD_DINO_PREPROCESSOR))
    return folder


def write_biomedclip(folder: Path) -> Path:
    from safetensors.torch import save_file

    from medvlm.modeling.vision_open_clip import OpenClipVisionTower

    tower = OpenClipVisionTower(BIOMEDCLIP["model_cfg"], img_size=224)
    folder.mkdir(parents=True, exist_ok=True)
    state = {f"visual.{k}": v.contiguous() for k, v in tower.backbone.state_dict().items()}
    save_file(state, str(folder / "open_clip_model.safetensors"))
    (folder / "open_clip_config.json").write_text(json.dumps(BIOMEDCLIP))
    return folder


PRESETS = {
    "rad_dino_gpt2_mimic": {"vision": write_rad_dino, "text": GPT2},
    "biomedclip_qwen2_lora_vqa": {"vision": write_biomedclip, "text": QWEN25_05B},
}


def run_preset(name: str, work: Path, steps: int, batch_size: int) -> dict:
    from medvlm.random_towers import save_random_lm

    spec = PRESETS[name]
    vision = spec["vision"](work / f"{name}-vision")
    text = save_random_lm(work / f"{name}-text", spec["text"], WORDS)
    out = work / f"{name}-run"
    vqa = ", vqa: true" if "vqa" in name else ""  # the VQA preset reads questions: the synthetic VQA set has them
    dataset = ["data.dataset=synthetic", "data.root=null",
               f"data.options={{num_train: {max(4 * batch_size, 8)}, num_validation: 4, num_test: 4, seed: 0{vqa}}}"]
    argv = [sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "configs/pretrained" / f"{name}.yaml"),
            f"model.vision.pretrained_path={vision}", f"model.text.pretrained_path={text}",
            *dataset, f"train.output_dir={out}", f"train.max_steps={steps}", f"train.batch_size={batch_size}",
            "train.grad_accum=1", "train.warmup_steps=1", "train.log_every=1", "train.eval_every=0",
            "train.save_every=0", "train.tensorboard=false", "train.mixed_precision='no'"]
    started = time.perf_counter()
    log = out.with_suffix(".log")
    with open(log, "w") as sink:  # the run's own peak memory: os.wait4 gives this child's rusage alone
        child = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT, text=True)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    peak_kib = usage.ru_maxrss
    stdout = log.read_text()
    if child.returncode != 0:
        raise SystemExit(f"{name}: train.py failed\n{stdout[-6000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rates = [r["samples_per_s"] for r in rows if "samples_per_s" in r and r.get("step", 0) > 1]  # step 1 warms up
    rates.sort()
    median_rate = rates[len(rates) // 2] if rates else float("nan")
    params = next((line for line in stdout.splitlines() if "parameters" in line), "")
    return {"preset": name, "steps": steps, "batch_size": batch_size, "samples_per_s": median_rate,
            "seconds_per_step": batch_size / median_rate if median_rate else float("nan"),
            "peak_rss_gib": peak_kib / 2**20, "peak_rss_note": "max RSS of the training process", "wall_s": wall,
            "parameters_line": params.strip()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--presets", nargs="*", default=list(PRESETS), choices=list(PRESETS))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    result = {"benchmark": "presets", "machine": machine(torch.get_num_threads())}
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.presets:
            row = run_preset(name, Path(tmp), args.steps, args.batch_size)
            results.append(row)
            print(f"{name}: {row['seconds_per_step']:.2f} s/step, {row['samples_per_s']:.2f} samples/s at batch "
                  f"{row['batch_size']}, peak RSS {row['peak_rss_gib']:.2f} GiB ({row['parameters_line']})",
                  flush=True)
    result["results"] = results
    finish_machine(result)
    out = args.out or ROOT / "benchmarks" / "results" / "presets.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
