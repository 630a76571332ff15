"""The training step as one CUDA graph: a paper-scale step launches hundreds of small kernels
(the augmentations alone over a hundred), and at batch 48 the host issuing them, not the GPU,
sets the pace. Replaying a captured graph issues them all at once.

    step = GraphedStep(model, optimizer, temperature=0.1, generator=g, amp=True, grad_clip=None)
    loss = step(batch)   # eager for the first `warmup` steps, then captured and replayed

What is captured is pretrain.forward_backward (augmentation, encoder, projector, NT-Xent,
backward, gradient clipping) for one batch shape; the optimiser and the LR scheduler run
eagerly after each replay, so a changing learning rate needs no special handling. The
augmentation generator is registered with the graph: each replay draws what an eager step
would from the generator's current seed and offset, reseeding included. A batch of another
shape runs the eager step. Right after capture the graph is checked against an eager step on
the same batch and generator state; if capturing fails or the check does not pass, a one-line
warning says why and every step stays eager. What a graph cannot hold (a host read of a GPU
value, a copy from host memory) is looked for without a GPU by tests/unit/test_graph_safety.py.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import nn

from .data.sampling import CropBatch
from .pretrain import forward_backward, train_step

T = TypeVar("T")


class GraphedStep:
    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, *, generator: torch.Generator,
                 scheduler=None, warmup: int = 3, **step_args):
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.generator, self.step_args, self.warmup = generator, step_args, warmup
        self.eager_steps = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.failed: str | None = None
        self.static_views = self.static_loss = None
        self.grads: list[tuple[nn.Parameter, torch.Tensor]] = []
        self.side_stream = torch.cuda.Stream()

    @property
    def status(self) -> str:
        """'replaying', 'warming up' or 'failed (why)': for benchmarks and logs."""
        return "replaying" if self.graph is not None else f"failed ({self.failed})" if self.failed else "warming up"

    def __call__(self, batch: CropBatch) -> torch.Tensor:
        views = batch.audio
        if self.graph is None and self.failed is None and self.eager_steps >= self.warmup and self._capture(views):
            return self._finish()  # the check inside _capture replayed the graph on this batch
        if self.graph is not None and views.shape == self.static_views.shape:
            self.static_views.copy_(views, non_blocking=True)
            self.graph.replay()
            return self._finish()
        self.eager_steps += 1
        if self.graph is not None or self.failed is not None:
            return self._eager(batch)
        return on_side_stream(lambda: self._eager(batch), self.side_stream)

    def _finish(self) -> torch.Tensor:
        for param, grad in self.grads:  # an eager step in between may have set them to None
            if param.grad is not grad:
                param.grad = grad
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        return self.static_loss.clone()

    def _eager(self, batch: CropBatch) -> torch.Tensor:
        return train_step(self.model, batch, self.optimizer, generator=self.generator, scheduler=self.scheduler,
                          **self.step_args)

    def _capture(self, views: torch.Tensor) -> bool:
        """Capture forward_backward on views' shape, then check it: the same batch from the same
        generator state, once eagerly and once replayed, must give the same loss and gradients
        (the buffers BatchNorm updates are put back in between). True if the graph is in use, its
        replay on `views` done; False (warned once) if capture failed or the check did not pass."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        static_views = views.detach().to(params[0].device, copy=True)  # the graph cannot copy from the host
        generator_state = self.generator.get_state()
        buffers = [b.detach().clone() for b in self.model.buffers()]
        self.optimizer.zero_grad(set_to_none=True)  # backward inside the graph allocates them in its pool
        try:
            graph, static_loss = capture(
                lambda: forward_backward(self.model, static_views, generator=self.generator, **self.step_args),
                self.generator)
            graph_grads = [p.grad for p in params]
            self.optimizer.zero_grad(set_to_none=True)
            self.generator.set_state(generator_state)
            eager_loss = forward_backward(self.model, static_views, generator=self.generator, **self.step_args)
            eager_grads = [p.grad for p in params]
            for b, saved in zip(self.model.buffers(), buffers):
                b.copy_(saved)
            self.generator.set_state(generator_state)
            graph.replay()
            mismatch = _mismatch(eager_loss, static_loss, eager_grads, graph_grads)
        except Exception as exc:  # noqa: BLE001 - any capture failure: stay eager, say why once
            mismatch = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}" if str(exc) else type(exc).__name__
        if mismatch:
            self.failed = mismatch
            for b, saved in zip(self.model.buffers(), buffers):
                b.copy_(saved)
            self.generator.set_state(generator_state)
            self.optimizer.zero_grad(set_to_none=True)
            warnings.warn(f"CUDA graph of the training step not used, training on eagerly ({mismatch})",
                          RuntimeWarning, stacklevel=3)
            return False
        for param, grad in zip(params, graph_grads):
            param.grad = grad
        self.graph, self.static_views, self.static_loss = graph, static_views, static_loss
        self.grads = [(p, g) for p, g in zip(params, graph_grads) if g is not None]
        return True


def on_side_stream(fn: Callable[[], T], stream: torch.cuda.Stream | None = None) -> T:
    """fn() on a side stream, the current stream waiting for it before and after: how CUDA graph
    capture wants its warm-up calls, so that lazily created state (cuDNN autotuning, cuBLAS
    workspaces, FFT plans, the optimiser's) exists before capture."""
    stream = stream or torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        out = fn()
    torch.cuda.current_stream().wait_stream(stream)
    return out


def capture(fn: Callable[[], T], generator: torch.Generator) -> tuple[torch.cuda.CUDAGraph, T]:
    """fn() captured as a CUDA graph with `generator` registered (each replay draws from its state
    at that time, as an eager call would): the graph and fn's output, which every replay rewrites."""
    graph = torch.cuda.CUDAGraph()
    graph.register_generator_state(generator)
    with torch.cuda.graph(graph, capture_error_mode="thread_local"):
        out = fn()
    return graph, out


def _mismatch(eager_loss: torch.Tensor, graph_loss: torch.Tensor, eager_grads: list, graph_grads: list,
              tolerance: float = 1e-2) -> str | None:
    """None when the replay reproduced the eager step (loss and all gradients within `tolerance` of
    their size: kernel rounding passes, a different augmentation or a stale buffer does not)."""
    if any(g is None for e, g in zip(eager_grads, graph_grads, strict=True) if e is not None):
        return "the replay left some gradients empty"
    pairs = [(e.float(), g.float()) for e, g in zip(eager_grads, graph_grads) if e is not None]
    grad_error = torch.stack([(g - e).norm() for e, g in pairs]).norm() / torch.stack([e.norm() for e, _ in pairs]).norm()
    loss_error = (graph_loss.float() - eager_loss.float()).abs() / eager_loss.float().abs().clamp_min(1e-12)
    grad_error, loss_error = float(grad_error), float(loss_error)
    if not (grad_error <= tolerance and loss_error <= tolerance):
        return f"its replay differs from the eager step: loss by {loss_error:.1e}, gradients by {grad_error:.1e}"
    return None
