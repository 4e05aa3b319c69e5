"""obsviz: see, run and compare structured Optimal Brain Surgeon pruning."""

from obsviz.estimate import BASELINES, METHODS, OBS_MODES, memory_estimate
from obsviz.geometry import PRESETS, Geometry
from obsviz.layers import (
    DEFAULT_SAMPLE,
    Layer,
    LayerFileError,
    list_layers,
    load_layer,
    load_sample_layer,
    sample_layer_names,
    save_layers,
)
from obsviz.prune import PruneResult, prune, resolve_device

__all__ = ["Geometry", "PRESETS", "prune", "PruneResult", "METHODS", "OBS_MODES", "BASELINES",
           "memory_estimate", "resolve_device", "Layer", "LayerFileError", "DEFAULT_SAMPLE",
           "list_layers", "load_layer", "load_sample_layer", "sample_layer_names", "save_layers"]
__version__ = "0.1.0"
