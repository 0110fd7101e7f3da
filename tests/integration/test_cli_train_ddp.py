"""Two CPU processes under torchrun (gloo) train the tiny GAN in lockstep and end with identical weights."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from defectgen.data.procedural import make_dataset

WORKER = textwrap.dedent("""
    import sys
    import torch
    import torch.distributed as tdist
    from safetensors.torch import save_file
    from defectgen.training.config import TrainGanConfig
    from defectgen.training.gan import tiny_model_configs, train_gan

    data, out, dump = sys.argv[1:4]
    g, d = tiny_model_configs(16)
    cfg = TrainGanConfig(data=data, res=16, kimg=3 * 2 * 2 / 1000, batch=2, r1_interval=2, log_every=1,
                         sample_every=100, ckpt_every=100, grid_per_type=1)
    res = train_gan(cfg, out, g_cfg=g, d_cfg=d, progress=False, device="cpu")
    rank = tdist.get_rank()
    state = {f"{n}.{k}": v.contiguous() for n in ("G", "G_ema", "D")
             for k, v in getattr(res.state, n).state_dict().items()}
    save_file(state, f"{dump}/rank{rank}.safetensors")
    tdist.destroy_process_group()
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_gloo_ranks_stay_identical(tmp_path):
    data = tmp_path / "nuts"
    make_dataset(data, res=16, n_good=4, n_defect=2, n_test_good=1, seed=2)
    (tmp_path / "worker.py").write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(tmp_path / "worker.py"), str(data), str(tmp_path / "run"),
           str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0, r1 = load_file(tmp_path / "rank0.safetensors"), load_file(tmp_path / "rank1.safetensors")
    assert r0.keys() == r1.keys()
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
    # the ranks saw different data, so training did move the weights; only rank 0 wrote the run folder
    lines = (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[-1])["kimg"] == 0.012
    assert json.loads((tmp_path / "run" / "config.json").read_text())["world_size"] == 2
