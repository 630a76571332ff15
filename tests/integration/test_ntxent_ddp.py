"""NT-Xent with negatives gathered across 2 gloo workers equals the single-process loss.

The workers meet through a FileStore in the test's folder, not a TCP port picked in advance: a port
found free and then handed to `env://` can be taken in between (seen: a hang of the whole CI run
right after the job-submit test's Ray cluster went down). Every wait is bounded.
"""

import os
import shutil
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from clmr_ray.losses import nt_xent

WORLD = 2
N_PER_RANK = 4


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 5))


def _batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(WORLD * N_PER_RANK, 6, generator=g), torch.randn(WORLD * N_PER_RANK, 6, generator=g)


def _worker(rank, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{out_dir}/rendezvous", rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=60))
    try:
        model = DistributedDataParallel(_model())
        x_a, x_b = _batch()
        local = slice(rank * N_PER_RANK, (rank + 1) * N_PER_RANK)
        loss = nt_xent(model(x_a[local]), model(x_b[local]), 0.5, gather=True)
        loss.backward()
        global_loss = loss.detach().clone()
        dist.all_reduce(global_loss)
        grads = [p.grad for p in model.parameters()]
        torch.save({"loss": global_loss / WORLD, "grads": grads}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _run_workers(out_dir, limit_s: float = 90.0, attempts: int = 2) -> None:
    """Spawn the ranks; a run that does not finish in time is killed (its stacks printed by py-spy,
    which comes with Ray) and tried once more in a fresh folder. Seen once in CI-like runs: both ranks
    stuck past every gloo timeout right after the job-submit tests; not reproduced in 3 later tries."""
    for attempt in range(1, attempts + 1):
        folder = Path(out_dir) / f"attempt{attempt}"
        folder.mkdir()
        workers = mp.spawn(_worker, args=(str(folder),), nprocs=WORLD, join=False)
        deadline = time.monotonic() + limit_s
        while not workers.join(timeout=1):
            if time.monotonic() > deadline:
                for process in workers.processes:
                    print(_stacks(process.pid))
                    process.kill()
                break
        else:
            for rank in range(WORLD):
                shutil.copy(folder / f"rank{rank}.pt", Path(out_dir) / f"rank{rank}.pt")
            return
        print(f"attempt {attempt}: the {WORLD} gloo workers did not finish within {limit_s:.0f} s")
    pytest.fail(f"the {WORLD} gloo workers did not finish within {limit_s:.0f} s, {attempts} times (stacks above)")


def _stacks(pid: int) -> str:
    py_spy = Path(sys.executable).parent / "py-spy"
    try:
        out = subprocess.run([str(py_spy), "dump", "--native", "--pid", str(pid)], capture_output=True, text=True,
                             timeout=30, check=False)
        return f"--- rank process {pid}\n{out.stdout[-4000:]}{out.stderr[-1000:]}"
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"--- rank process {pid}: no stacks ({exc})"


def test_gathered_loss_and_gradients_equal_single_process(tmp_path):
    _run_workers(tmp_path)

    model = _model()
    x_a, x_b = _batch()
    loss = nt_xent(model(x_a), model(x_b), 0.5)
    loss.backward()
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        torch.testing.assert_close(got["loss"], loss.detach())
        for mine, ref in zip(got["grads"], (p.grad for p in model.parameters())):
            torch.testing.assert_close(mine, ref, rtol=1e-5, atol=1e-6)
