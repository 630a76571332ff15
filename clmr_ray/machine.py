"""What a run's numbers depend on besides (spec, seed, code): the machine, and how we pin it.

A run is bit-identical on one machine when its thread count is fixed: `use_threads` sets
torch's intra-op threads to spec.scaling.cpus_per_worker in every process that trains or
evaluates (a `clmr-ray run`, an ablation trial, a Ray Train worker), whatever else runs beside it.

Across machines the CPU kernels differ: torch's own kernels dispatch on the CPU's vector ISA
(ATEN_CPU_CAPABILITY), convolutions go through oneDNN (ONEDNN_MAX_CPU_ISA) and matrix products
through MKL (MKL_CBWR), and each picks the widest ISA the CPU has. On one AVX-512 machine, each
of the three moves a tiny run's loss in the 6th digit and, through the probe, its metrics.
`PORTABLE_CPU` pins all three to AVX2, which every x86-64 CPU of the last decade has, so two
such machines run the same kernels. Set them before torch runs its first op (the CLI's
--portable-cpu does, and hands them to Ray's workers).

On CUDA, `use_deterministic` turns on torch's deterministic algorithms and cuBLAS's fixed
workspace (scaling.deterministic); bench step reports what it costs.
"""

from __future__ import annotations

import argparse
import os

PORTABLE_CPU = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2"}
PIN_VARIABLES = tuple(PORTABLE_CPU)
CUBLAS_WORKSPACE = ("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def pin_portable_cpu() -> dict[str, str]:
    """Pin this process (and the processes it starts) to the portable CPU kernels; returns the
    variables set. A value the user already set wins."""
    for name, value in PORTABLE_CPU.items():
        os.environ.setdefault(name, value)
    return cpu_pins()


def cpu_pins() -> dict[str, str]:
    return {name: os.environ[name] for name in PIN_VARIABLES if name in os.environ}


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), else what the platform says."""
    import platform
    from pathlib import Path

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def use_threads(cpus: int) -> None:
    import torch

    torch.set_num_threads(max(1, int(cpus)))


def use_deterministic(enabled: bool) -> None:
    """torch's deterministic algorithms on (CUDA: also cuBLAS's fixed workspace), or off."""
    import torch

    if enabled:
        os.environ.setdefault(*CUBLAS_WORKSPACE)
        torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(enabled)


def prepare(spec, device) -> None:
    """Set what a run's numbers depend on before it trains: threads on CPU, determinism on CUDA."""
    import torch

    if torch.device(device).type == "cpu":
        use_threads(spec.scaling.cpus_per_worker)
    use_deterministic(spec.scaling.deterministic)


def device_problem(device: str) -> str | None:
    """Why torch cannot run on `device` here, in a few words (an unknown name, no CUDA device, an index past
    the last card); None when it can. The commands that take --device check it before anything starts."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        return "not a device (expected cpu, cuda or cuda:N)"
    if dev.type not in ("cpu", "cuda"):
        return "not a device this project runs on (expected cpu, cuda or cuda:N)"
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            return "no CUDA device is available on this machine"
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            last = f" to cuda:{count - 1}" if count > 1 else ""
            return f"this machine has {count} CUDA device{'s' if count > 1 else ''}: cuda:0{last}"
    return None


def device_arg(text: str) -> str:
    """argparse type of --device: the name as given, or a one-line error naming it (see device_problem)."""
    problem = device_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(f"{text}: {problem}")
    return text


def stop_on_sigterm_as_on_ctrl_c() -> None:
    """SIGTERM (what `ray job stop`, a scheduler or `kill` sends) stops this process as Ctrl-C does:
    a run raises KeyboardInterrupt, Tune stops its trials and the command says how to go on. Call it
    again after ray.init, whose own handler replaces it (a native stack dump, exit 134). Main thread only."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, frame: signal.raise_signal(signal.SIGINT))
