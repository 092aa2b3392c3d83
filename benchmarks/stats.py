"""Figures: the samples of one measurement, their median, and ratios to baselines."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else math.nan


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100): a value that was actually seen."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return float(ordered[rank - 1])


@dataclass
class Figure:
    key: str
    """Stable id of the measurement, whatever the sizes: "cold.init", "list.deep", ..."""
    scenario: str
    metric: str
    variant: str
    samples: list[float]
    unit: str
    """"ms", "chunks/s", "turns/s" or "MB"."""
    higher_is_better: bool = False
    baselines: tuple[str, ...] = ()
    """Variants to give ratios against ("{variant}" is replaced by this one's name), or
    "@metric": this variant's figure for another metric of the same scenario."""
    note: str = ""
    ratios: dict[str, float] = field(default_factory=dict)
    targets: list[tuple[str, bool | None]] = field(default_factory=list)
    """(target as written, met?); None when not judged (smoke sizes)."""

    @property
    def value(self) -> float:
        return median(self.samples)

    @property
    def spread(self) -> tuple[float, float]:
        return (min(self.samples), max(self.samples)) if self.samples else (math.nan, math.nan)

    def as_json(self) -> dict[str, Any]:
        low, high = self.spread
        return {
            "key": self.key,
            "scenario": self.scenario,
            "metric": self.metric,
            "variant": self.variant,
            "unit": self.unit,
            "median": self.value,
            "min": low,
            "max": high,
            "runs": len(self.samples),
            "samples": self.samples,
            "higher_is_better": self.higher_is_better,
            "ratios": self.ratios,
            "targets": [{"target": text, "met": met} for text, met in self.targets],
            "note": self.note,
        }


def compute_ratios(figures: list[Figure]) -> None:
    """Each figure's median over each of its baselines' (same scenario and metric)."""
    index = {(f.scenario, f.metric, f.variant): f for f in figures}
    for figure in figures:
        for template in figure.baselines:
            if template.startswith("@"):
                name = template[1:]
                base = index.get((figure.scenario, name, figure.variant))
            else:
                name = template.format(variant=figure.variant)
                base = index.get((figure.scenario, figure.metric, name))
            if base is None or base is figure or not base.value:
                continue
            figure.ratios[name] = figure.value / base.value
