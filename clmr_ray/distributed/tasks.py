"""Ray-parallel map for the data jobs (prepare, corpus generation).

The data layer takes a plain `map_fn(fn, items)` so it never imports Ray; this module is the
Ray side: tasks on a local Ray (or the cluster in RAY_ADDRESS), results in input order, a
bounded number in flight so memory stays flat on large datasets.
"""

from __future__ import annotations

import os
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def quiet_ray_defaults() -> None:
    """Ray's console settings for our commands, unless the user set them. Ray reads RAY_DEDUP_LOGS
    when it is first imported, so the CLI calls this before anything imports Ray."""
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")  # per-epoch progress lines of parallel trials all show
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune prints nothing at verbose=0; our progress lines do


def ensure_ray(num_cpus: int | None = None) -> None:
    """Connect to RAY_ADDRESS when set, else start a quiet local Ray."""
    quiet_ray_defaults()
    import ray

    if ray.is_initialized():
        return
    from .. import machine

    pins = machine.cpu_pins()  # a local Ray's workers inherit them; a cluster's get them here
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=True,
                 runtime_env={"env_vars": pins} if pins else None)
        set_up_working_dir_on_every_node()
    else:  # "local": never attach to a cluster some `ray start` left recorded in /tmp/ray
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=True,
                 configure_logging=True, logging_level="WARNING")
    machine.stop_on_sigterm_as_on_ctrl_c()  # ray.init replaced it


def set_up_working_dir_on_every_node(timeout_s: float = 300) -> None:
    """Have every alive node unpack this job's working_dir before any of our work runs there.

    A node's runtime-env agent removes and unpacks the package folder again when it first sets it up
    for the job, and raylets on one host share that folder: done mid-run, that pulls it from under the
    running workers of another raylet (an import fails while it is half unpacked). So one no-op task
    per node, one node after the other, the driver's node first. Best effort: a node that does not
    answer within timeout_s (one still starting) sets it up when its first trial comes."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if not ray.get_runtime_context().runtime_env.get("working_dir"):
        return
    here = ray.get_runtime_context().get_node_id()
    nodes = sorted((n["NodeID"] for n in ray.nodes() if n["Alive"]), key=lambda node: node != here)
    noop = ray.remote(num_cpus=0)(lambda: None)
    for node in nodes:
        try:
            ray.get(noop.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(),
                    timeout=timeout_s)
        except ray.exceptions.GetTimeoutError:
            pass


def ray_imap(fn: Callable[[T], R], items: Iterable[T], *, max_in_flight: int | None = None,
             num_cpus_per_task: float = 1.0) -> Iterator[R]:
    """Yield fn(item) for each item, computed in Ray tasks, in input order."""
    import ray

    ensure_ray()
    def call(item):  # a plain function, so builtins and callables work too
        return fn(item)

    remote = ray.remote(num_cpus=num_cpus_per_task, max_retries=2)(call)
    window = max_in_flight or max(2, int(ray.available_resources().get("CPU", 1)) * 2)
    pending: deque = deque()
    for item in items:
        pending.append(remote.remote(item))
        if len(pending) >= window:
            yield ray.get(pending.popleft())
    while pending:
        yield ray.get(pending.popleft())


def ray_map(fn: Callable[[T], R], items: Iterable[T], **kwargs) -> list[R]:
    return list(ray_imap(fn, items, **kwargs))


def progress(done: int, total: int, what: str, stream=sys.stderr) -> None:
    """A one-line progress counter that rewrites itself on a terminal."""
    end = "\n" if done >= total or not stream.isatty() else ""
    if stream.isatty() or done == total or done % max(1, total // 10) == 0:
        print(f"\r{what}: {done}/{total}", end=end, file=stream, flush=True)
