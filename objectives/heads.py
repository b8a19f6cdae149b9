"""Output heads that sit on a backbone's per-atom features."""

from __future__ import annotations

from torch import Tensor, nn


class AtomwiseMLP(nn.Module):
    """Per-atom MLP ``[N, width] -> [N, out]``: Linear -> SiLU -> Linear (hidden = width // 2 by default)."""

    def __init__(self, width: int, out: int = 1, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or max(1, width // 2)
        self.net = nn.Sequential(nn.Linear(width, hidden), nn.SiLU(), nn.Linear(hidden, out))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
