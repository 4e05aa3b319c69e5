"""obsviz: see, run and compare structured Optimal Brain Surgeon pruning."""

from obsviz.geometry import PRESETS, Geometry

__all__ = ["Geometry", "PRESETS"]
__version__ = "0.1.0"
