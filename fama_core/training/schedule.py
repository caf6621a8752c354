"""Learning-rate schedules of FBK's recipe, as functions of the number of updates already done.

fairseq sets the rate for update n+1 right after update n (and for the first update from n=0), so
`lr_at(n)` is the rate the (n+1)-th optimiser step uses. Formulas:

- inverse_sqrt (FAMA small, step 1): init + n * (lr - init) / W while n < W, then lr * sqrt(W / n).
- piecewise_warmup (FAMA medium, step 1; arXiv 2505.23420): init -> intermediate_lr linearly over the first
  Wi updates, intermediate_lr -> lr linearly until W, then lr * sqrt(W / n).
- fixed (step 2): lr.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SCHEDULES = ("inverse_sqrt", "piecewise_warmup", "fixed")


@dataclass
class Schedule:
    name: str = "inverse_sqrt"
    lr: float = 2e-3
    warmup_updates: int = 25000
    warmup_init_lr: float = 0.0
    intermediate_lr: float = 0.0
    intermediate_warmup_updates: int = 0

    def __post_init__(self) -> None:
        if self.name not in SCHEDULES:
            raise ValueError(f"unknown lr schedule {self.name!r}; choose one of {', '.join(SCHEDULES)}")
        if self.name != "fixed" and self.warmup_updates <= 0:
            raise ValueError(f"{self.name} needs warmup_updates > 0")
        if self.name == "piecewise_warmup":
            if not self.warmup_init_lr < self.intermediate_lr < self.lr:
                raise ValueError("piecewise_warmup needs warmup_init_lr < intermediate_lr < lr")
            if not 0 < self.intermediate_warmup_updates < self.warmup_updates:
                raise ValueError("piecewise_warmup needs 0 < intermediate_warmup_updates < warmup_updates")

    def lr_at(self, n: int) -> float:
        """Learning rate after `n` updates (used by update n+1)."""
        if self.name == "fixed":
            return self.lr
        W = self.warmup_updates
        if self.name == "inverse_sqrt":
            if n < W:
                return self.warmup_init_lr + n * (self.lr - self.warmup_init_lr) / W
            return self.lr * math.sqrt(W) / math.sqrt(n)
        Wi = self.intermediate_warmup_updates
        if n < Wi:
            return self.warmup_init_lr + n * (self.intermediate_lr - self.warmup_init_lr) / Wi
        if n < W:
            return self.intermediate_lr + (n - Wi) * (self.lr - self.intermediate_lr) / (W - Wi)
        return self.lr * math.sqrt(W) / math.sqrt(n)
