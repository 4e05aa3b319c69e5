"""obsviz: see, run and compare structured Optimal Brain Surgeon pruning."""

import os

# Spinning OpenMP workers starve each other when the machine is busy (a browser, a server and
# torch on a few cores): sleeping workers were up to 10x faster there. Only applies when obsviz
# is imported before torch; scripts/dev sets it for the app and the tests.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from obsviz.errors import ArgumentError
from obsviz.estimate import memory_estimate
from obsviz.export import save_pruned
from obsviz.geometry import PRESETS, Geometry
from obsviz.layers import (
    DEFAULT_SAMPLE,
    Layer,
    LayerFileError,
    list_layers,
    load_layer,
    load_layers,
    load_sample_layer,
    sample_layer_names,
    save_layers,
)
from obsviz.methods import BASELINES, METHODS, OBS_MODES
from obsviz.prune import PruneResult, prune, resolve_device
from obsviz.store import RunStore, default_store_path
from obsviz.sweep import sweep  # the function; the module is sys.modules["obsviz.sweep"]

__all__ = ["ArgumentError", "Geometry", "PRESETS", "prune", "PruneResult", "METHODS", "OBS_MODES",
           "BASELINES",
           "memory_estimate", "resolve_device", "Layer", "LayerFileError", "DEFAULT_SAMPLE",
           "list_layers", "load_layer", "load_layers",
           "load_sample_layer", "sample_layer_names", "save_layers",
           "save_pruned", "RunStore", "default_store_path", "sweep"]
__version__ = "0.1.0"
