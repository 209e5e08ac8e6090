"""The loss-valley rule of SWAD, as plain Python over a sequence of validation losses (no torch).

Segment k holds the iterates between validation k-1 and validation k; L(k) is the live model's source-validation
loss at its end. `LossValley.add(L)` is called once per validation and says which segments join the average.

Rule (our spec `swad.md`, section 2, after the official khanrc/swad code, without its double counting):
- Converge at c when the oldest of the last `n_converge` losses is their minimum (ties count);
  threshold tau = (1 + tolerance_ratio) * mean(those losses).
- Start: look back at most `lookback` checkpoints before c. j = the first checkpoint after the last one whose
  loss exceeds tau (or the oldest in the window if none does); averaging starts with segment j + 1 (every
  averaged iterate was taken after the model entered the valley), and never later than c.
- Then segments are taken contiguously: a segment with L <= tau joins together with any pending segments before
  it; one with L > tau waits. When the last `n_tolerance` losses all exceed tau the valley is dead: pending
  segments are dropped and training should stop. At the end of training pending segments are dropped too.
Each segment joins at most once.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class LossValley:
    """Decides, one validation at a time, which segments form the SWAD average."""

    n_converge: int = 3
    n_tolerance: int = 6
    tolerance_ratio: float = 0.3
    lookback: int = 3

    losses: list[float] = field(default_factory=list)
    converge_index: int | None = None
    threshold: float | None = None
    start_index: int | None = None
    end_index: int | None = None
    accepted: list[int] = field(default_factory=list)
    pending: list[int] = field(default_factory=list)
    dead: bool = False

    def __post_init__(self) -> None:
        if self.n_converge < 1 or self.n_tolerance < 1 or self.lookback < 0 or self.tolerance_ratio < 0:
            raise ValueError(
                "SWAD needs n_converge >= 1, n_tolerance >= 1, lookback >= 0 and tolerance_ratio >= 0; got "
                f"{self.n_converge}, {self.n_tolerance}, {self.lookback}, {self.tolerance_ratio}"
            )

    @property
    def converged(self) -> bool:
        return self.converge_index is not None

    def keep_from(self) -> int:
        """Oldest segment index whose weights may still join; older segments' weights can be freed."""
        if self.dead:
            return len(self.losses)
        if self.converged:
            return self.pending[0] if self.pending else len(self.losses)
        # a future converge point c >= k - n_converge + 2; its start >= c - lookback + 1
        return max(0, len(self.losses) - self.n_converge - self.lookback + 2)

    def add(self, loss: float) -> tuple[list[int], bool]:
        """Record the next segment's loss; return (segments that join the average now, valley is dead)."""
        if self.dead:
            raise RuntimeError("the loss valley is dead: training should have stopped")
        loss = float(loss)
        if loss != loss:  # NaN
            raise FloatingPointError(f"SWAD got a NaN validation loss at segment {len(self.losses)}")
        self.losses.append(loss)
        k = len(self.losses) - 1
        if not self.converged:
            window = self.losses[-self.n_converge :]
            if len(window) < self.n_converge or window[0] > min(window):
                return [], False
            c = k - self.n_converge + 1
            self.converge_index = c
            self.threshold = (1.0 + self.tolerance_ratio) * sum(window) / len(window)
            first = max(0, c - self.lookback)
            above = [i for i in range(first, c) if self.losses[i] > self.threshold]
            j = above[-1] + 1 if above else first
            self.start_index = min(j + 1, c)
            candidates = range(self.start_index, k + 1)
        else:
            candidates = [k]
        joined: list[int] = []
        for i in candidates:
            self.pending.append(i)
            if self.losses[i] <= self.threshold:
                joined.extend(self.pending)
                self.pending = []
        self.accepted.extend(joined)
        if self.accepted:
            self.end_index = self.accepted[-1]
        last_ok = self.end_index if self.end_index is not None else self.converge_index
        if k - last_ok >= self.n_tolerance:
            self.dead = True
            self.pending = []
        return joined, self.dead

    def finish(self) -> None:
        """End of training: segments still waiting for a loss below the threshold never join."""
        self.pending = []

    def state_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)
