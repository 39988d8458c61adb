"""Two CPU processes (gloo): gathered contrastive loss equals the one-process loss on the
concatenated batch, and its gradients match once DDP averages them; a 2-process training run completes."""

import os
import shutil
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from medvlm.modeling.losses import contrastive_loss, gather_with_local_grad, match_single_process_gradient


def _inputs():
    generator = torch.Generator().manual_seed(0)
    image = F.normalize(torch.randn(8, 6, generator=generator), dim=-1)
    text = F.normalize(torch.randn(8, 6, generator=generator), dim=-1)
    keys = torch.tensor([1, 2, 1, 3, 4, 4, 5, 6])  # duplicate reports across the two halves
    return image, text, keys


def _worker(rank, port, results):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    image, text, keys = _inputs()
    part = slice(rank * 4, rank * 4 + 4)
    local_image = image[part].clone().requires_grad_(True)
    local_text = text[part].clone().requires_grad_(True)
    loss = match_single_process_gradient(contrastive_loss(
        gather_with_local_grad(local_image), gather_with_local_grad(local_text), torch.tensor(10.0),
        gather_with_local_grad(keys[part])))
    loss.backward()
    # DDP averages parameter gradients over the 2 processes; those are linear in these feature
    # gradients, so after averaging each slice must carry the one-process gradient
    grads = torch.cat([local_image.grad, local_text.grad], dim=1) / 2
    results[rank] = (float(loss), grads.tolist())
    dist.destroy_process_group()


def test_gathered_contrastive_loss_matches_one_process():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(_worker, args=(port, results), nprocs=2, join=True)

    image, text, keys = _inputs()
    image.requires_grad_(True)
    text.requires_grad_(True)
    loss = contrastive_loss(image, text, torch.tensor(10.0), keys)
    loss.backward()
    for rank in range(2):
        rank_loss, rank_grads = results[rank]
        assert rank_loss == pytest.approx(float(loss), rel=1e-6)
        part = slice(rank * 4, rank * 4 + 4)
        expected = torch.cat([image.grad[part], text.grad[part]], dim=1)
        torch.testing.assert_close(torch.tensor(rank_grads), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(shutil.which("accelerate") is None and not os.path.exists(
    os.path.join(os.path.dirname(sys.executable), "accelerate")), reason="accelerate launcher not installed")
def test_two_process_training_run_completes(tmp_path):
    from tiny import train_command

    launcher = os.path.join(os.path.dirname(sys.executable), "accelerate")
    command = train_command(tmp_path / "ddp", "train.max_steps=3", "train.save_every=2")
    result = subprocess.run([launcher, "launch", "--num_processes", "2", "--cpu", "--num_machines", "1",
                             "--mixed_precision", "no", "--dynamo_backend", "no", *command[1:]],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "ddp" / "final" / "model.safetensors").is_file()
    assert (tmp_path / "ddp" / "checkpoints" / "step-0000002" / "COMPLETE").is_file()
