"""Contrastive losses: SimCLR's NT-Xent and the cross-format variant.

For N pairs (z_a[i], z_b[i]) the 2N embeddings u = [z_a; z_b] are compared by cosine
similarity. Anchor i's positive is its partner (i + N mod 2N); the 2N - 1 other embeddings
(everything but itself) are its candidates:

    l_i = -log( exp(sim(u_i, u_pos(i)) / tau) / sum_{k != i} exp(sim(u_i, u_k) / tau) )

and the loss is the mean of l_i over the 2N anchors.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
import torch.nn.functional as F


def nt_xent(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float, *, gather: bool = False) -> torch.Tensor:
    """NT-Xent between two views [N, D], computed in float32.

    With gather=True under torch.distributed, every worker's embeddings are all-gathered (with
    gradient) and each worker scores its own anchors against the whole global batch: the mean
    of the workers' losses, and DDP's mean of their gradients, equal the single-process loss
    and gradient on the concatenated batch."""
    if z_a.shape != z_b.shape or z_a.dim() != 2:
        raise ValueError(f"nt_xent: views must both be [N, D], got {tuple(z_a.shape)} and {tuple(z_b.shape)}")
    if temperature <= 0:
        raise ValueError(f"nt_xent: temperature must be > 0, got {temperature}")
    z_a = F.normalize(z_a.float(), dim=1)
    z_b = F.normalize(z_b.float(), dim=1)
    n = z_a.shape[0]
    rank, world = _dist_rank_world() if gather else (0, 1)
    if world > 1:
        all_a, all_b = _all_gather(z_a), _all_gather(z_b)
    else:
        all_a, all_b = z_a, z_b
    total = all_a.shape[0]
    if total < 2:
        raise ValueError("nt_xent: needs at least 2 pairs across the batch")
    candidates = torch.cat([all_a, all_b])  # [2 * total, D], global order
    anchors = torch.cat([z_a, z_b])  # [2N, D], the local rows of `candidates`
    logits = anchors @ candidates.T / temperature  # [2N, 2 * total]

    local = torch.arange(n, device=z_a.device) + rank * n
    self_col = torch.cat([local, local + total])
    pos_col = torch.cat([local + total, local])
    # masks by comparison, not by assigning True: that copies a CPU scalar, which a CUDA graph cannot hold
    columns = torch.arange(logits.shape[1], device=z_a.device)
    is_self = columns == self_col.unsqueeze(1)
    logits = logits.masked_fill(is_self, torch.finfo(logits.dtype).min)  # exclude self, stays finite
    is_pos = columns == pos_col.unsqueeze(1)
    # cross-entropy with the positive as target, written with a mask: F.cross_entropy's CUDA
    # backward has no deterministic kernel, and scaling.deterministic must be able to train
    return -logits.log_softmax(dim=1).masked_fill(~is_pos, 0.0).sum(dim=1).mean()


def cross_format_nt_xent(z_audio: torch.Tensor, z_spec: torch.Tensor, temperature: float, *,
                         gather: bool = False) -> torch.Tensor:
    """Early-fusion objective of Wang & van den Oord (2021): the positive of a crop's audio view is
    the spectrogram view of the same crop (and vice versa); every other view in the batch, of
    either format, is a negative. It is NT-Xent with a = audio embeddings, b = spectrogram ones."""
    return nt_xent(z_audio, z_spec, temperature, gather=gather)


def _dist_rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate x from every rank (same shape everywhere), differentiably: the backward pass
    sends each rank the gradient its embeddings received as negatives on the other ranks, so
    DDP's gradient average equals the gradient of the single-process loss on the global batch."""
    return torch.cat(dist_fn.all_gather(x))
