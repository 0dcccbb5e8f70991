"""Models a curious server crafts against the clipping bound, shared by the attack tests."""

from __future__ import annotations

import torch
from torch import nn


class TwoReadouts(nn.Module):
    """A trainable layer on two positions, read out by frozen, huge, opposite weights: what a
    server sends so that a record's per-position gradient terms are enormous and cancel."""

    def __init__(self, d: int, embed: bool) -> None:
        super().__init__()
        self.layer = nn.Embedding(10, d) if embed else nn.Linear(d, d, bias=False)
        self.p0, self.p1 = nn.Linear(d, 2, bias=False), nn.Linear(d, 2, bias=False)
        for q in (*self.p0.parameters(), *self.p1.parameters()):
            q.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.layer(x)
        return self.p0(h[:, 0]) + self.p1(h[:, 1])


def cancelling_linear(d: int, asymmetry: float) -> TwoReadouts:
    """The linear attack (found in review): read-outs of +-1e4 (within a site's weight limit)
    that differ by ``asymmetry`` on four weights, and a small trained layer; fed one record with
    two equal positions, its true gradient is 25-860 C while float32 ghost norms cancel to ~0."""
    model = TwoReadouts(d, embed=False)
    with torch.no_grad():
        base = torch.randn(2, d).sign() * 1e4
        model.p0.weight.copy_(base)
        model.p1.weight.copy_(-base)
        model.p0.weight[0, :4] += asymmetry
        model.layer.weight.copy_(torch.randn(d, d) * 1e-3)
    return model
