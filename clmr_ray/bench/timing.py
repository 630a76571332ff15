"""Wall-clock timing of a call on CPU or GPU (CUDA work synchronised around each call)."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def call_times(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int) -> list[float]:
    """Seconds of each of `repeats` calls of fn(), after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def graph_replay_ms(fn: Callable[[], object], generator: torch.Generator, replays: int = 20) -> float | str:
    """Milliseconds of one replay of fn() captured as a CUDA graph (`generator` registered, so each
    replay draws anew), replays back to back as a graphed training step runs them: what fn costs
    the GPU once the host no longer issues its kernels one by one. A string saying why if the
    capture failed."""
    from clmr_ray.graphed_step import capture, on_side_stream

    try:
        on_side_stream(fn)  # lazily made state (FFT plans, workspaces) exists before capture
        graph, _ = capture(fn, generator)
    except Exception as exc:  # noqa: BLE001 - a benchmark row reports it, the others go on
        return f"failed ({type(exc).__name__})"
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / replays
