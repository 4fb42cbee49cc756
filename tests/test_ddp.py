"""`torchrun --nproc_per_node 2 -m ghostify finetune` (gloo on CPU) runs to the end and, on the same
global batch, reaches the same weights as one process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ghostify
from ghostify.cli.app import main

sys.path.insert(0, str(Path(__file__).parent))
from test_finetune import make_cli_fixture  # noqa: E402


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
def test_two_processes_match_one_process_after_one_step(tmp_path):
    teacher, data = make_cli_fixture(tmp_path)
    ghost = tmp_path / "t.ghost"
    assert main(["convert", str(teacher), "--input-size", "1,28,28", "--init", "transfer", "--out", str(ghost),
                 "--no-layers"]) == 0
    # BatchNorm statistics are per process on CPU (no SyncBatchNorm there): freeze them for the comparison
    common = ["finetune", str(ghost), "--teacher", str(teacher), "--data", f"fashion-mnist:{data}", "--epochs", "1",
              "--max-steps", "1", "--batch-size", "16", "--freeze-bn", "--lr", "0.1", "--warmup-steps", "0"]
    one = tmp_path / "one.ghost"
    assert main([*common, "--out", str(one)]) == 0

    two = tmp_path / "two.ghost"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "ghostify", *common, "--out", str(two), "--metrics", str(tmp_path / "m.jsonl")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert two.exists()
    lines = (tmp_path / "m.jsonl").read_text().splitlines()
    assert any('"world_size": 2' in line for line in lines)  # rank 0 wrote, once
    assert sum('"event": "start"' in line for line in lines) == 1

    a, b, start = ghostify.load(one).state_dict(), ghostify.load(two).state_dict(), ghostify.load(ghost).state_dict()
    assert a.keys() == b.keys()
    moved = 0
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=k)
        moved += int(not torch.equal(a[k], start[k]))
    assert moved > 0  # the step changed the weights
