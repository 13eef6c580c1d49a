"""``torchrun --nproc_per_node 2`` (gloo, CPU): the job finishes, only rank 0 writes, its model loads with the
matching spec and gives the logits of the checkpointed state, and it ends where one process with the same global
batch ends.

Where the two agree: every step sees the same global batch (the sampler test in ``test_train_recipes.py``), and
DistributedDataParallel averages the two half-batch gradients, which equals the whole-batch gradient up to the
order of floating-point sums. So for a model without batch-dependent layers (``timm:test_convnext``: LayerNorm,
no BatchNorm, no dropout) the weights agree to rounding (~1e-7 after 8 AdamW steps that move them by ~5e-3), not
bit for bit. A model with BatchNorm would differ by design: each process normalises with the statistics of its
half batch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import robustsig as rs
from robustsig.cli import main
from robustsig.train.start import finetune_start
from robustsig.train.state import load_train_state

from train_helpers import write_colour_folder

pytestmark = [pytest.mark.torchrun,
              pytest.mark.filterwarnings("ignore:.*randomly initialised", "ignore:.*Grad strides do not match")]
ARGS = ["--new-head", "--image-size", "32", "--epochs", "2", "--batch-size", "6", "--lr", "1e-3", "--warmup-steps",
        "2", "--workers", "0", "--device", "cpu", "--checkpoint-every", "3"]


def test_two_process_gloo_job_matches_one_process(tmp_path, monkeypatch, capsys, free_port, one_thread):
    data = write_colour_folder(tmp_path / "colours")
    spec = "timm:test_convnext"
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "ROBUSTSIG_PROGRESS": "0",
           "PYTHONPATH": str(Path(rs.__file__).parents[1])}
    job = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                          "127.0.0.1", "--master_port", str(free_port), "-m", "robustsig", "finetune", spec,
                          "--data", f"folder:{data}", "--out", str(out), "--json", *ARGS],
                         env=env, capture_output=True, text=True, timeout=300)
    assert job.returncode == 0, job.stderr[-3000:]
    summary = json.loads(job.stdout)  # rank 1 prints nothing
    assert (summary["world_size"], summary["steps"], summary["epochs"]) == (2, 8, 2)
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "model.safetensors", "recipe.yaml",
                                                     "train_log.csv"]
    assert len((out / "train_log.csv").read_text().splitlines()) == 3  # header + one row per epoch

    # the model loads with the matching spec and gives the logits of the checkpointed state
    state = load_train_state(out / "checkpoint.pt")
    assert state.position.step == 8
    ddp = rs.load_classifier(summary["spec"], device="cpu")
    assert summary["spec"] == f"{spec}@{(out / 'model.safetensors').resolve()}"
    reference = rs.load_classifier(summary["spec"], device="cpu")
    torch.nn.init.zeros_(reference.head.weight)
    reference.load_state_dict(state.model)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ddp(x), reference(x), rtol=0, atol=0)

    # one process, same global batch, same seed
    with pytest.raises(SystemExit) as done:
        main(["finetune", spec, "--data", f"folder:{data}", "--out", str(tmp_path / "single"), "--json", *ARGS])
    assert done.value.code == 0
    single = rs.load_classifier(json.loads(capsys.readouterr().out)["spec"], device="cpu")
    initial = finetune_start(spec, rs.open_dataset("folder", data), device="cpu", new_head=True, seed=0).state_dict()

    def largest(a, b) -> float:
        return max((a[k] - b[k]).abs().max().item() for k in a if a[k].is_floating_point())

    difference, moved = largest(ddp.state_dict(), single.state_dict()), largest(single.state_dict(), initial)
    assert difference < 1e-5 and moved > 1000 * difference  # agreement to rounding, far below what training moved
    with torch.no_grad():
        torch.testing.assert_close(ddp(x), single(x), rtol=1e-4, atol=1e-4)
    ddp_rows = [line.split(",") for line in (out / "train_log.csv").read_text().splitlines()[1:]]
    single_rows = [line.split(",") for line in (tmp_path / "single" / "train_log.csv").read_text().splitlines()[1:]]
    for a, b in zip(ddp_rows, single_rows):
        assert a[:2] == b[:2] and float(a[2]) == pytest.approx(float(b[2]), rel=1e-4) and a[3:7] == b[3:7]
