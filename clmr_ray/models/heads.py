"""The SimCLR projector and the evaluation heads (linear probe, one-hidden-layer MLP)."""

from __future__ import annotations

from torch import nn

from clmr_ray.config import SpecError


class Projector(nn.Sequential):
    """z = W2 relu(W1 h): the non-linear projection the contrastive loss sees."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int):
        super().__init__(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim))


class LinearHead(nn.Linear):
    """Logistic regression on frozen features (the paper's linear evaluation)."""

    def __init__(self, in_dim: int, n_classes: int):
        super().__init__(in_dim, n_classes)


class MLPHead(nn.Sequential):
    def __init__(self, in_dim: int, hidden: int, n_classes: int):
        super().__init__(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, n_classes))


def build_head(kind: str, in_dim: int, n_classes: int, hidden: int = 512) -> nn.Module:
    if kind == "linear":
        return LinearHead(in_dim, n_classes)
    if kind == "mlp":
        return MLPHead(in_dim, hidden, n_classes)
    raise SpecError(f"eval.head: unknown head '{kind}'; choose one of linear, mlp")
