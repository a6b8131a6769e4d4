"""The settings of a SIMS run (:class:`SimsParams`) and the bundle defaults they fall back to."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_SIMS_POSTPROCESS = {
    "threshold": 0.5,
    "h": 1.0,
    "split": True,
    "min_area": 4,
    "fill_holes": True,
    "exclude_border": False,
    "min_significance": 5.0,
}


@dataclass
class SimsParams:
    """Settings of a SIMS run; ``None`` takes the model bundle's value."""

    threshold: float | None = None
    level: float | None = None  # watershed level (h); see detect_particles
    split: bool | None = None
    min_area: int | None = None
    background: str = "annulus"
    grow: int = 1
    ring: tuple[int, int] = (3, 8)
    batch_size: int = 64  # fields per network call
    channels: list[str] | None = None
    min_significance: float | None = None  # sigma of the uranium net counts; see significant

    def resolved(self, bundle) -> "SimsParams":
        """Return these settings with every ``None`` replaced by the bundle's post-processing value.

        ``level`` is None when the resolved ``split`` is off.
        """
        pp = {**DEFAULT_SIMS_POSTPROCESS, **bundle.metadata.get("postprocess", {})}
        split = pp.get("split", True) if self.split is None else self.split
        level = self.level if self.level is not None else pp.get("h", 1.0)
        return SimsParams(
            threshold=float(self.threshold if self.threshold is not None else pp["threshold"]),
            level=float(level) if split else None,
            split=split,
            min_area=int(self.min_area if self.min_area is not None else pp.get("min_area", 4)),
            background=self.background,
            grow=self.grow,
            ring=tuple(self.ring),
            batch_size=self.batch_size,
            channels=self.channels,
            min_significance=float(
                self.min_significance if self.min_significance is not None else pp.get("min_significance", 0.0)
            ),
        )
