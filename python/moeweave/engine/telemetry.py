"""The engine's counters: what was read, what the cache and the predictor saved, where the time
went. One Counters per generated token and a running total."""

from dataclasses import dataclass, fields, replace


@dataclass
class Counters:
    expert_bytes_needed: int = 0  # bytes of the experts the steps used
    hit_bytes: int = 0  # of those, found in the cache
    bytes_read: int = 0  # read from the store (demand and prefetch)
    demand_reads: int = 0
    fallback_reads: int = 0  # of those, read from the low-bit copy
    prefetches: int = 0  # prefetch reads issued
    prefetches_used: int = 0  # prefetched experts a step then needed
    prefetches_cancelled: int = 0
    predicted_needed: int = 0  # needed experts that had been predicted (recall numerator)
    needed: int = 0  # needed experts (recall denominator)
    stall_seconds: float = 0.0  # waiting for reads the step needed
    expert_seconds: float = 0.0  # the fused expert op
    step_seconds: float = 0.0  # whole forward steps

    def add(self, other: "Counters") -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def minus(self, other: "Counters") -> "Counters":
        return Counters(**{f.name: getattr(self, f.name) - getattr(other, f.name) for f in fields(self)})

    def copy(self) -> "Counters":
        return replace(self)

    @property
    def byte_hit_rate(self) -> float:
        return self.hit_bytes / self.expert_bytes_needed if self.expert_bytes_needed else 1.0

    @property
    def prefetch_precision(self) -> float:
        return self.prefetches_used / self.prefetches if self.prefetches else 0.0

    @property
    def prefetch_recall(self) -> float:
        return self.predicted_needed / self.needed if self.needed else 0.0

    def summary(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out.update(
            byte_hit_rate=self.byte_hit_rate,
            prefetch_precision=self.prefetch_precision,
            prefetch_recall=self.prefetch_recall,
        )
        return out
