"""Hardware facts (probe.collect) and telemetry sampling (sampler.TelemetrySampler).

This package never imports `bench`: it only reports what the machine is and what it does.
"""

from hwprobe.probe import collect
from hwprobe.sampler import SAMPLE_FIELDS, TelemetrySampler
from hwprobe.window import WindowStats

__all__ = ["SAMPLE_FIELDS", "TelemetrySampler", "WindowStats", "collect"]
