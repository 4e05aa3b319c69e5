"""Sweeps: layers × geometries × nnz × methods × damp, run locally or on Ray, kept in a
:class:`~obsviz.store.RunStore`.

A spec is a TOML file (or the same structure as a dict)::

    name = "attention-2:4"                    # optional; default: the spec file's name
    device = "cpu"                            # optional; default: CUDA when present

    [[layers]]
    file = "layers.safetensors"               # inside the spec's folder (see below)
    names = ["encoder.layer.3.attention.self.query"]   # omitted: every layer in the file
    [[layers]]
    sample = "layer0.query"                   # a shipped sample layer (or a list of them)
    # (from Python, an obsviz.Layer object may stand in the list of layers too)
    [[layers]]
    checkpoint = "model_dir"                  # every Linear (or `names`) of a local checkpoint,
    text = "calibration.txt"                  # with dense Hessians from this text
    max_tokens = 2000                         # optional (default 50 000)

    [grid]
    presets = ["2:4", "coupled-2:4"]          # presets or any "N:M"
    geometries = [{ block = [1, 1], scope = [1, 8], nnz = 4 }]   # free-form (view_shape/stride)
    nnz = [2]                                 # optional: overrides every geometry's default
    methods = ["magnitude", "sparsegpt", { method = "interleaved", n_splits = 2 }]
    damp = [0.01]                             # optional (default [0.01])
    first_rows = 64                           # optional: prune only the first rows (what-if)

Paths in a spec file are relative to its folder and stay inside it: an absolute path, ``~``,
``..`` or a symbolic link that leads out of the folder is a spec error (a spec may come from
someone else; it reads what its folder holds and nothing else). A dict given to
:func:`parse_spec` with ``base=`` follows the same rule; without ``base`` (a spec built in Python)
its paths are used as given. Integers are at most ``SPEC_MAX_INT``; arrays and tables nest at
most ``MAX_SPEC_DEPTH`` deep.

Each trial has a key (a digest of the layer's content, the geometry, nnz, method, its resolved
options, damp and rows); a trial already stored as done is skipped (resume). Two layers of equal
contents under different names are pruned once: each name gets its trials in the store (the
same run, filed under both names) and the report says which layer each one shares
(``SweepReport.same_as``).

A result that cannot be written to the store (another writer holding its lock past the busy
timeout, a full disk) does not stop the sweep: it is kept in memory and written as soon as the
store takes writes again; what still cannot be written at the end is listed in
``SweepReport.unwritten``.
"""

from __future__ import annotations

import math
import os
import re
import reprlib
import time
import tomllib
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from obsviz import methods as registry
from obsviz.errors import ArgumentError
from obsviz.geometry import Geometry, nothing_pruned_text, run_name
from obsviz.hessian import check_damp
from obsviz.layers import DEFAULT_MAX_BYTES, Layer, load_layers, load_sample_layer
from obsviz.methods import METHODS
from obsviz.prune import PruneResult, prune, resolve_device
from obsviz.store import RunStore, StoreError, geometry_label, layer_hash, trial_key

__all__ = ["EXECUTORS", "SpecError", "SweepProgress", "SweepReport", "SweepSpec", "Trial",
           "load_spec", "parse_spec", "plan", "run_trial", "summary_table", "sweep",
           "target_sparsity"]

EXECUTORS = ("local", "ray")
#: The largest grid one spec may expand to (a typo such as nnz = [1, …, 1000] stops here).
MAX_TRIALS = 100_000
#: The largest integer a spec field takes (nnz, shapes, rows, tokens): far above any real value,
#: far below what the run database (64-bit integers) holds.
SPEC_MAX_INT = 2**31 - 1
#: How deep arrays and tables may nest in a spec (a valid one nests 3 deep).
MAX_SPEC_DEPTH = 8

_SHOW = reprlib.Repr()
_SHOW.maxstring, _SHOW.maxother, _SHOW.maxlong, _SHOW.maxlevel = 80, 80, 40, 3


def _show(value: object) -> str:
    """A value from a spec in a message: its repr, cut short (a huge or 3,000-deep value stays a
    short line, never a RecursionError)."""
    return _SHOW.repr(value)


class SpecError(ArgumentError):
    """A bad sweep spec; ``argument`` is the field's path (``"grid.methods[2]"``)."""

    def __init__(self, argument: str, message: str, where: str = "") -> None:
        super().__init__(argument, f"{where}: {argument}: {message}" if where
                         else f"{argument}: {message}")


# ---- the spec --------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerSource:
    """Where layers come from: ``kind`` is ``"file"``, ``"sample"``, ``"checkpoint"`` or
    ``"given"`` (a :class:`Layer` already in memory, from the API or the app)."""

    kind: str
    path: Path | None = None          # file or checkpoint folder
    names: tuple[str, ...] | None = None   # None: every layer
    text: Path | None = None          # checkpoint calibration text
    max_tokens: int = 50_000
    seq_len: int = 128
    layer: Layer | None = None        # kind "given"

    @classmethod
    def given(cls, layer: Layer) -> LayerSource:
        if not isinstance(layer, Layer):
            raise ArgumentError("layers", f"{type(layer).__name__} is not an obsviz Layer")
        return cls("given", names=(layer.name,), layer=layer)


@dataclass(frozen=True)
class GeometrySpec:
    """A preset name (built for each layer's shape) or a free-form view/block/scope."""

    preset: str | None = None
    block: tuple[int, ...] | None = None
    scope: tuple[int, ...] | None = None
    view_shape: tuple[int, ...] | None = None
    view_stride: tuple[int, ...] | None = None
    nnz: int | None = None
    name: str | None = None

    def build(self, shape: tuple[int, int]) -> Geometry:
        if self.preset is not None:
            return Geometry.preset(self.preset, shape)
        return Geometry(shape, self.block, self.scope, self.view_shape, self.view_stride,
                        name=self.name, nnz=self.nnz)

    @property
    def label(self) -> str:
        if self.preset is not None:
            return self.preset
        return self.name or f"block {list(self.block)}, scope {list(self.scope)}"


@dataclass(frozen=True)
class MethodSpec:
    method: str
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def label(self) -> str:
        if not self.options:
            return self.method
        return f"{self.method}({', '.join(f'{k}={v}' for k, v in self.options)})"


@dataclass(frozen=True)
class SweepSpec:
    """A validated spec (see the module docstring)."""

    name: str
    layers: tuple[LayerSource, ...]
    geometries: tuple[GeometrySpec, ...]
    methods: tuple[MethodSpec, ...]
    nnz: tuple[int, ...] | None = None
    damp: tuple[float, ...] = (0.01,)
    device: str | None = None
    first_rows: int | None = None


_TOP_KEYS = {"name", "device", "layers", "grid"}
_LAYER_KEYS = {"file", "sample", "checkpoint", "names", "text", "max_tokens", "seq_len"}
_GRID_KEYS = {"presets", "geometries", "nnz", "methods", "damp", "first_rows"}
_GEOM_KEYS = {"block", "scope", "view_shape", "view_stride", "nnz", "name"}


def load_spec(path: str | os.PathLike) -> SweepSpec:
    """Read and validate a TOML spec; paths in it are relative to its folder."""
    path = Path(path)
    if not path.is_file():
        raise SpecError("spec", f"{str(path)!r}: no such file")
    if path.stat().st_size > 1_000_000:
        raise SpecError("spec", f"{str(path)!r} is over 1 MB; a sweep spec is a short TOML file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise SpecError("spec", f"not valid TOML ({e})", where=path.name) from None
    too_deep = _toml_too_deep(text)
    if too_deep is not None:
        raise SpecError(too_deep, f"arrays or tables nested more than {MAX_SPEC_DEPTH} deep; a "
                        "spec nests 3 deep at most", where=path.name)
    try:
        data = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, ValueError, RecursionError) as e:
        raise SpecError("spec", f"not valid TOML ({str(e)[:300]})", where=path.name) from None
    data.setdefault("name", path.stem)
    return parse_spec(data, base=path.parent, where=path.name)


#: What the depth scan steps over (strings, comments) or counts (brackets, ``=``, line ends).
_TOML_TOKEN = re.compile(r'"""[\s\S]*?"""' r"|'''[\s\S]*?'''" r'|"(?:[^"\\\n]|\\.)*"'
                         r"|'[^'\n]*'|#[^\n]*|[\[\]{}=\n]")


def _toml_too_deep(text: str) -> str | None:
    """The field (``"grid.nnz"``, ``"layers[0].names"``) whose value nests arrays or inline tables
    more than ``MAX_SPEC_DEPTH`` deep, found by one scan of the text (strings and comments
    skipped) before the TOML parser recurses into it; ``None`` when none does."""
    depth, table, key, line_start = 0, "", "", 0
    counts: dict[str, int] = {}
    for m in _TOML_TOKEN.finditer(text):
        tok = m.group()
        if tok == "\n":
            line_start = m.end()
        elif tok == "=" and depth == 0:
            key = text[line_start:m.start()].strip().strip("\"'")
        elif tok == "[" and depth == 0 and not text[line_start:m.start()].strip():
            header = re.match(r"\[(\[?)\s*([^\]\n]*?)\s*\]", text[m.start():])
            if header is not None:  # a [table] or [[array of tables]] header
                name = header.group(2).strip("\"'")
                if header.group(1):
                    counts[name] = counts.get(name, -1) + 1
                    name = f"{name}[{counts[name]}]"
                table, key = name, ""
                continue
            depth += 1
        elif tok in "[{":
            depth += 1
            if depth > MAX_SPEC_DEPTH:
                return f"{table}.{key}" if table and key else key or table or "spec"
        elif tok in "]}":
            depth = max(0, depth - 1)
    return None


def parse_spec(data: dict, base: str | os.PathLike | None = None, where: str = "") -> SweepSpec:
    """Validate a spec given as data (the TOML's structure). ``base``: the spec's folder; every
    path in it is relative to that folder and must stay inside it (no absolute path, ``~``,
    ``..`` or symbolic link out). Without ``base`` (a spec built in Python) paths are used as
    given, relative to the current folder. Every error names its field."""

    def err(field_: str, message: str) -> SpecError:
        return SpecError(field_, message, where)

    confined = base is not None
    base = Path(base) if base is not None else Path.cwd()
    if not isinstance(data, dict):
        raise err("spec", "must be a table (a TOML document or a dict)")
    _no_unknown(data, _TOP_KEYS, "", err)
    name = data.get("name", "sweep")
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        raise err("name", f"{_show(name)} must be a non-empty string of at most 200 characters")
    device = data.get("device")
    if device is not None and device not in ("cpu", "cuda"):
        raise err("device", f"{_show(device)} is unknown; valid: 'cpu', 'cuda' (omit it: CUDA when "
                  "present)")

    layers_in = data.get("layers")
    if not isinstance(layers_in, list) or not layers_in:
        raise err("layers", "give at least one [[layers]] table (file = …, sample = … or "
                  "checkpoint = …)")
    layers = tuple(_parse_layer(i, entry, base, confined, err)
                   for i, entry in enumerate(layers_in))

    grid = data.get("grid")
    if not isinstance(grid, dict):
        raise err("grid", "a [grid] table is required (presets/geometries, methods, damp)")
    _no_unknown(grid, _GRID_KEYS, "grid.", err)
    geoms: list[GeometrySpec] = []
    presets = _list_of(grid, "presets", str, err, required=False)
    for i, p in enumerate(presets or []):
        try:  # the name only, on a shape that fits it; each layer's shape is checked per trial
            n, colon, m = p.partition(":")
            fits = (16 * int(m), 16 * int(m)) if colon and m.isdigit() and int(m) else (256, 256)
            default_nnz = Geometry.preset(p, fits).nnz
        except ValueError as e:
            raise err(f"grid.presets[{i}]", str(e)) from None
        geoms.append(GeometrySpec(preset=p, nnz=default_nnz))
    for i, g in enumerate(_list_of(grid, "geometries", dict, err, required=False) or []):
        geoms.append(_parse_geometry(f"grid.geometries[{i}]", g, err))
    if not geoms:
        raise err("grid.presets", "give at least one geometry: presets = [\"2:4\", …] and/or "
                  "geometries = [{ block = […], scope = […] }]")
    nnz = _list_of(grid, "nnz", int, err, required=False)
    if nnz is not None:
        for i, v in enumerate(nnz):
            _check_int(f"grid.nnz[{i}]", v, 0, err, "blocks kept per scope")
    for i, g in enumerate(geoms):
        if nnz is None and g.preset is None and g.nnz is None:
            raise err(f"grid.geometries[{i - len(presets or [])}].nnz",
                      "a free-form geometry needs nnz (or give grid.nnz)")
    methods = tuple(_parse_method(i, m, err) for i, m in
                    enumerate(_list_of(grid, "methods", (str, dict), err, required=True)))
    damp = _list_of(grid, "damp", (int, float), err, required=False) or [0.01]
    for i, d in enumerate(damp):
        try:
            check_damp(d)
        except ArgumentError as bad:
            raise err(f"grid.damp[{i}]", str(bad)) from None
    first_rows = grid.get("first_rows")
    if first_rows is not None:
        _check_int("grid.first_rows", first_rows, 1, err, "rows pruned")
    spec = SweepSpec(name=name.strip(), layers=layers, geometries=tuple(geoms), methods=methods,
                     nnz=None if nnz is None else tuple(dict.fromkeys(nnz)),
                     damp=tuple(float(d) for d in dict.fromkeys(damp)), device=device,
                     first_rows=first_rows)
    per_layer = len(spec.geometries) * len(spec.nnz or (None,)) * len(methods) * len(spec.damp)
    if per_layer > MAX_TRIALS:
        raise err("grid", f"{per_layer:,} trials per layer, over the limit of {MAX_TRIALS:,}")
    return spec


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_int(field_: str, v, lo: int, err, what: str = "") -> None:
    """A spec error naming ``field_`` unless ``v`` is an integer in ``[lo, SPEC_MAX_INT]``."""
    about = f" ({what})" if what else ""
    if not _is_int(v) or v < lo:
        want = "a positive integer" if lo == 1 else f"an integer >= {lo}"
        raise err(field_, f"{_show(v)} must be {want}{about}")
    if v > SPEC_MAX_INT:
        raise err(field_, f"{_show(v)} is over {SPEC_MAX_INT:,}, the largest integer a spec "
                  f"takes{about}")


def _no_unknown(table: dict, valid: set[str], prefix: str, err) -> None:
    for k in table:
        if k not in valid:
            raise err(f"{prefix}{k}", f"unknown field; valid: {', '.join(sorted(valid))}")


def _list_of(table: dict, key: str, types, err, required: bool, prefix: str = "grid."):
    if key not in table:
        if required:
            raise err(f"{prefix}{key}", "is required")
        return None
    value = table[key]
    if not isinstance(value, list):
        value = [value]
    if required and not value:
        raise err(f"{prefix}{key}", "must not be empty")
    if len(value) > 10_000:
        raise err(f"{prefix}{key}", f"has {len(value):,} items; at most 10,000")
    for i, v in enumerate(value):
        if isinstance(v, bool) or not isinstance(v, types):
            want = types.__name__ if isinstance(types, type) else \
                " or ".join(t.__name__ for t in types)
            raise err(f"{prefix}{key}[{i}]", f"{_show(v)} must be a {want}")
    return value


def _spec_path(field_: str, raw, base: Path, confined: bool, err) -> Path:
    """``raw`` as a path under ``base``; with ``confined`` it must be relative, free of ``~`` and
    ``..``, and still inside ``base`` once symbolic links are followed."""
    if not isinstance(raw, str) or not raw.strip() or "\0" in raw:
        raise err(field_, f"{_show(raw)} must be a path (relative to the spec's folder)")
    if not confined:
        return base / Path(raw).expanduser()
    rule = ("paths in a spec are relative to its folder and stay inside it (no absolute path, "
            "'~' or '..')")
    path = Path(raw)
    if path.is_absolute() or raw.startswith("~") or ".." in path.parts or ".." in Path(
            raw.replace("\\", "/")).parts:
        raise err(field_, f"{_show(raw)}: {rule}")
    full = base / path
    try:
        inside = full.resolve().is_relative_to(base.resolve())
    except (OSError, RuntimeError):  # a symbolic link loop
        inside = False
    if not inside:
        raise err(field_, f"{_show(raw)} leads out of the spec's folder through a symbolic "
                  f"link; {rule}")
    return full


def _parse_layer(i: int, entry, base: Path, confined: bool, err) -> LayerSource:
    at = f"layers[{i}]"
    if isinstance(entry, Layer):  # the API and the app: a layer already in memory
        return LayerSource.given(entry)
    if not isinstance(entry, dict):
        raise err(at, "must be a table with file = …, sample = … or checkpoint = …")
    _no_unknown(entry, _LAYER_KEYS, f"{at}.", err)
    kinds = [k for k in ("file", "sample", "checkpoint") if k in entry]
    if len(kinds) != 1:
        raise err(at, f"give exactly one of file, sample, checkpoint (found {kinds or 'none'})")
    kind = kinds[0]
    names = _list_of(entry, "names", str, err, required=False, prefix=f"{at}.")
    names = None if names is None else tuple(dict.fromkeys(names))
    if names == ():
        raise err(f"{at}.names", "must not be empty (omit it for every layer)")
    if kind == "sample":
        from obsviz.layers import sample_layer_names

        if names is not None:
            raise err(f"{at}.names", "is for file and checkpoint layers; list samples in "
                      "sample = [\"layer0.query\", …]")
        samples = tuple(_list_of(entry, "sample", str, err, required=True, prefix=f"{at}."))
        valid = sample_layer_names()
        for j, s in enumerate(samples):
            if s not in valid:
                raise err(f"{at}.sample[{j}]", f"{_show(s)} is not a shipped sample layer; valid: "
                          f"{', '.join(valid)}")
        for k in ("text", "max_tokens", "seq_len"):
            if k in entry:
                raise err(f"{at}.{k}", "is for checkpoint layers only")
        return LayerSource("sample", names=samples)
    raw = entry[kind]
    path = _spec_path(f"{at}.{kind}", raw, base, confined, err)
    if kind == "file":
        if not path.is_file():
            raise err(f"{at}.file", f"{_show(raw)}: no such file (looked for {path})")
        for k in ("text", "max_tokens", "seq_len"):
            if k in entry:
                raise err(f"{at}.{k}", "is for checkpoint layers only")
        return LayerSource("file", path=path, names=names)
    if not (path / "config.json").is_file():
        raise err(f"{at}.checkpoint", f"{_show(raw)}: not a checkpoint folder (no config.json "
                  f"in {path})")
    if confined:  # what the checkpoint loader reads: the folder's files, none a link out
        for f in sorted(path.iterdir())[:10_000]:
            _spec_path(f"{at}.checkpoint", str(Path(raw) / f.name), base, confined, err)
    text = entry.get("text")
    if text is None:
        from obsviz.layers import SAMPLE_DIR

        text_path = SAMPLE_DIR / "jargon_file_4.4.7_excerpt.txt"
    else:
        text_path = _spec_path(f"{at}.text", text, base, confined, err)
        if not text_path.is_file():
            raise err(f"{at}.text", f"{_show(text)}: no such text file")
    ints = {}
    for k, default, lo in (("max_tokens", 50_000, 16), ("seq_len", 128, 4)):
        v = entry.get(k, default)
        _check_int(f"{at}.{k}", v, lo, err)
        ints[k] = v
    return LayerSource("checkpoint", path=path, names=names, text=text_path, **ints)


def _shape_field(at: str, g: dict, key: str, err, required: bool):
    if key not in g:
        if required:
            raise err(f"{at}.{key}", "is required for a free-form geometry")
        return None
    v = g[key]
    if not isinstance(v, list) or not v or not all(_is_int(x) for x in v) or len(v) > 8:
        raise err(f"{at}.{key}", f"{_show(v)} must be a list of 1 to 8 integers")
    for j, x in enumerate(v):
        if abs(x) > SPEC_MAX_INT:
            raise err(f"{at}.{key}[{j}]", f"{_show(x)} is over {SPEC_MAX_INT:,} in size")
    return tuple(v)


def _parse_geometry(at: str, g: dict, err) -> GeometrySpec:
    _no_unknown(g, _GEOM_KEYS, f"{at}.", err)
    nnz = g.get("nnz")
    if nnz is not None:
        _check_int(f"{at}.nnz", nnz, 0, err, "blocks kept per scope")
    name = g.get("name")
    if name is not None and (not isinstance(name, str) or len(name) > 100):
        raise err(f"{at}.name", f"{_show(name)} must be a string of at most 100 characters")
    return GeometrySpec(block=_shape_field(at, g, "block", err, True),
                        scope=_shape_field(at, g, "scope", err, True),
                        view_shape=_shape_field(at, g, "view_shape", err, False),
                        view_stride=_shape_field(at, g, "view_stride", err, False),
                        nnz=nnz, name=name)


def _parse_method(i: int, m, err) -> MethodSpec:
    at = f"grid.methods[{i}]"
    if isinstance(m, str):
        m = {"method": m}
    method = m.get("method")
    if method not in METHODS:
        raise err(f"{at}", f"method {_show(method)} is unknown; valid: {', '.join(METHODS)}")
    allowed = registry.get(method).option_names
    options = []
    for k, v in m.items():
        if k == "method":
            continue
        if k not in allowed:
            raise err(f"{at}.{k}", f"is not an option of {method}; valid: "
                      f"{', '.join(allowed) or 'none'}")
        if _is_int(v) and abs(v) > SPEC_MAX_INT:  # bounded like every integer of a spec
            raise err(f"{at}.{k}", f"{_show(v)} is over {SPEC_MAX_INT:,} in size")
        try:  # the registry's own check, so a bad value is named before any trial runs
            options.append((k, registry.OPTIONS[k].check(v)))
        except (ValueError, RecursionError) as e:
            raise err(f"{at}.{k}", str(e)[:300] if isinstance(e, ValueError) else
                      "nested too deep") from None
    return MethodSpec(method, tuple(sorted(options)))


# ---- trials ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trial:
    """One point of the grid, as plain data (travels to Ray workers)."""

    index: int
    key: str
    layer: str            # the layer's name
    layer_ref: int        # index into the plan's layers
    geometry: str         # label: the preset name or the description
    geometry_spec: dict | None   # Geometry.to_dict(), None when it could not be built
    nnz: int
    method: str
    options: dict         # resolved: every option the method uses, with defaults
    damp: float
    device: str
    rows: tuple[int, ...] | None = None
    error: str | None = None   # set when the trial cannot run (geometry does not fit)

    @property
    def label(self) -> str:
        return f"{self.method} · {self.geometry} · nnz {self.nnz} · {self.layer}"


@dataclass
class Plan:
    spec: SweepSpec
    layers: list[Layer]
    hashes: list[str]
    trials: list[Trial]
    #: What to say before the trials run: each choice that prunes nothing (nnz keeps every
    #: block of a scope), once per geometry name, with its count of trials.
    warnings: list[str] = field(default_factory=list)
    #: A layer's name -> the name of the earlier layer whose contents it has (its trials are
    #: that layer's, computed once).
    same_as: dict[str, str] = field(default_factory=dict)
    #: The thin-calibration warning (``obsviz.hessian.thin_text``: N < K) of each layer whose
    #: file records fewer calibration samples than inputs; also in ``warnings``.
    thin: list[str] = field(default_factory=list)


def resolved_options(method: str, options: dict, device: str) -> dict:
    """Every option ``method`` uses, given or the registry's default (``c_dtype="auto"``
    resolved for the device): two trials with equal resolved options compute the same thing."""
    out = registry.resolve_options(method, **options)
    if "c_dtype" in out:
        out["c_dtype"] = str(registry.c_dtype_of(out["c_dtype"], device)).removeprefix("torch.")
    return out


#: Bytes per Hessian entry while a checkpoint is calibrated: the float64 running mean and the
#: float32 result.
_HESSIAN_BYTES_PER_ENTRY = 8 + 4


def checkpoint_hessian_bytes(src: LayerSource) -> int | None:
    """Memory the Hessians of a checkpoint source need (``12 K²`` bytes per layer), read from
    the weight files' headers without loading them; ``None`` when the checkpoint has no
    ``.safetensors`` weights to read the shapes from. Every layer counts when ``names`` is
    ``None`` (every 2-D weight: an upper bound)."""
    from safetensors import safe_open

    files = sorted(src.path.glob("*.safetensors"))
    if not files:
        return None
    shapes: dict[str, tuple[int, ...]] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as h:
            for k in h.keys():
                if k.endswith(".weight"):
                    shapes[k.removesuffix(".weight")] = tuple(h.get_slice(k).get_shape())
    total = 0
    for key, shape in shapes.items():
        if len(shape) != 2:
            continue
        wanted = src.names is None or any(key == n or key.endswith("." + n) for n in src.names)
        if wanted:
            total += _HESSIAN_BYTES_PER_ENTRY * shape[1] * shape[1]
    return total


def check_checkpoint_memory(src: LayerSource, free: int | None = None) -> None:
    """Refuse, before anything is allocated, a checkpoint source whose Hessians would need more
    than half of the free memory."""
    from obsviz.estimate import available_memory, format_bytes

    need = checkpoint_hessian_bytes(src)
    free = available_memory("cpu") if free is None else free
    if need is not None and free is not None and need > free // 2:
        which = "every Linear layer" if src.names is None else f"{len(src.names)} layers"
        raise ArgumentError("layers", f"checkpoint {src.path.name}: the dense Hessians of "
                            f"{which} need about {format_bytes(need)}, more than half of the "
                            f"{format_bytes(free)} free; list fewer layers in names = […] and "
                            "sweep them in parts")


def _load_layers(spec: SweepSpec, progress: Callable[[str], None]) -> list[Layer]:
    out: list[Layer] = []
    for src in spec.layers:
        if src.kind == "given":
            out.append(src.layer)
        elif src.kind == "sample":
            out.extend(load_sample_layer(n) for n in src.names)
        elif src.kind == "file":
            progress(f"loading {len(src.names) if src.names else 'every'} layer(s) from "
                     f"{src.path.name}")
            out.extend(load_layers(src.path, list(src.names) if src.names else None,
                                   max_bytes=DEFAULT_MAX_BYTES))
        else:
            from obsviz.calibrate import hessians_from_checkpoint

            check_checkpoint_memory(src)
            progress(f"calibrating {src.path.name} on {src.text.name}")
            text = src.text.read_text(encoding="utf-8", errors="replace")
            out.extend(hessians_from_checkpoint(
                src.path, text, layers=list(src.names) if src.names else None,
                max_tokens=src.max_tokens, seq_len=src.seq_len))
    return out


def plan(spec: SweepSpec, device: str | None = None,
         log: Callable[[str], None] = lambda m: None, *, here: bool = True) -> Plan:
    """Load the spec's layers and expand its grid into trials (in grid order). ``here=False``:
    the trials run elsewhere (Ray workers), so ``device`` is taken as given, not checked
    against this machine."""
    from obsviz.layout import row_sample

    if here:
        dev = resolve_device(device or spec.device).type
    elif (device or spec.device) in ("cpu", "cuda"):
        dev = device or spec.device
    else:
        raise ArgumentError("device", f"device={device!r} is unknown; valid: 'cpu', 'cuda'")
    layers = _load_layers(spec, log)
    names = Counter(lay.name for lay in layers)
    hashes = [layer_hash(lay.weight, lay.hessian) for lay in layers]
    trials: list[Trial] = []
    seen: set[tuple[str, str]] = set()
    nothing: dict[str, list[int]] = {}   # run name -> [blocks per scope, trials]
    first_named: dict[str, str] = {}   # layer hash -> the first name it came under
    same_as: dict[str, str] = {}
    for li, lay in enumerate(layers):
        name = lay.name if names[lay.name] == 1 else f"{lay.name} ({lay.source})"
        earlier = first_named.setdefault(hashes[li], name)
        if earlier != name:
            same_as.setdefault(name, earlier)
        for gs in spec.geometries:
            try:
                geom: Geometry | None = gs.build(lay.shape)
                gspec, gerr = geom.to_dict(), None
                rows = (tuple(row_sample(geom, first=min(spec.first_rows, lay.shape[0])).tolist())
                        if spec.first_rows else None)
            except ValueError as e:
                geom, gspec, gerr, rows = None, None, str(e), None
            nnzs = spec.nnz or (gs.nnz,)
            for nnz in nnzs:
                # the name of what is run: "4:8" at nnz 1 is "1:8"
                glabel = geometry_label(geom, nnz) if geom is not None else run_name(gs.label, nnz)
                for ms in spec.methods:
                    for damp in spec.damp:
                        opts = resolved_options(ms.method, dict(ms.options), dev)
                        err, empty = gerr, False
                        if err is None:
                            try:
                                empty = geom.prunes_nothing(nnz)
                            except ValueError as e:
                                err = str(e)
                        key = trial_key(hashes[li], geom if geom is not None else
                                        f"unbuilt:{gs}", nnz, ms.method,
                                        {**opts, "device": dev}, damp,
                                        list(rows) if rows else None)
                        if (name, key) in seen:  # the same computation listed twice
                            continue
                        seen.add((name, key))
                        trials.append(Trial(len(trials), key, name, li, glabel, gspec, nnz,
                                            ms.method, opts, damp, dev, rows, err))
                        if empty:
                            nothing.setdefault(glabel, [geom.blocks_per_scope, 0])[1] += 1
                        if len(trials) > MAX_TRIALS:
                            raise SpecError("grid", f"over {MAX_TRIALS:,} trials")
    thin = list(dict.fromkeys(text for lay in layers if (text := lay.thin_text)))
    warnings = [f"{nothing_pruned_text(label, gs)} ({n} trial{'s' if n > 1 else ''})"
                for label, (gs, n) in nothing.items()] + thin
    return Plan(spec, layers, hashes, trials, warnings, same_as, thin)


def run_trial(W: torch.Tensor, H: torch.Tensor, trial: Trial) -> dict:
    """Prune one trial; never raises for a trial's own failure: returns ``{"status": "failed",
    "error": message}`` then, else ``{"status": "done", "result": PruneResult}``."""
    if trial.error is not None:
        return {"status": "failed", "error": trial.error}
    try:
        geom = Geometry.from_dict(trial.geometry_spec)
        rows = torch.tensor(trial.rows) if trial.rows else None
        res = prune(W, H, geom, trial.nnz, method=trial.method, damp=trial.damp,
                    device=trial.device, rows=rows, **trial.options)
        res.weight, res.mask = res.weight.cpu(), res.mask.cpu()
        return {"status": "done", "result": res}
    except Exception as e:  # noqa: BLE001 - a trial's failure is data, recorded with its message
        return {"status": "failed", "error": f"{type(e).__name__}: {e}"}


# ---- progress and report ---------------------------------------------------------------------


@dataclass
class SweepProgress:
    """What a progress callback gets after each trial (and once at the start)."""

    total: int
    done: int = 0
    failed: int = 0
    skipped: int = 0
    shared: int = 0          # trials of a layer with the contents of an earlier one: its result
    elapsed_s: float = 0.0
    last: str = ""           # the label of the trial that just ended
    last_status: str = ""    # "done" | "failed" | "skipped" | ""
    unwritten: int = 0       # trials the store has not taken yet (it is locked, the disk full)

    @property
    def finished(self) -> int:
        return self.done + self.failed + self.skipped + self.shared

    @property
    def eta_s(self) -> float | None:
        ran = self.done + self.failed
        left = self.total - self.finished
        if ran == 0:
            return None if left else 0.0
        return self.elapsed_s / ran * left


@dataclass
class SweepReport:
    name: str
    store: str
    executor: str
    total: int
    done: int = 0
    failed: int = 0
    skipped: int = 0
    shared: int = 0          # trials whose result is that of a layer with the same contents
    stopped: bool = False
    seconds: float = 0.0
    run_ids: list[int] = field(default_factory=list)   # every stored trial's row, grid order
    #: A layer's name -> the earlier layer whose contents it has (``Plan.same_as``).
    same_as: dict[str, str] = field(default_factory=dict)
    #: Trials computed but not in the store (its lock held past every retry, a full disk):
    #: ``(trial label, why)``. They are lost when this process ends; run the sweep again.
    unwritten: list[tuple[str, str]] = field(default_factory=list)
    #: The layers pruned from thin calibration data (N < K): their warnings (``Plan.thin``).
    thin: list[str] = field(default_factory=list)

    @property
    def left(self) -> int:
        return self.total - self.done - self.failed - self.skipped - self.shared


# ---- executors --------------------------------------------------------------------------------


def _record(store: RunStore, plan_: Plan, trial: Trial, outcome: dict, name: str) -> int:
    lay = plan_.layers[trial.layer_ref]
    geometry: Geometry | str = (Geometry.from_dict(trial.geometry_spec)
                                if trial.geometry_spec else trial.geometry)
    common = dict(key=trial.key, layer=trial.layer, source=lay.source,
                  layer_hash=plan_.hashes[trial.layer_ref], shape=lay.shape, geometry=geometry,
                  nnz=trial.nnz, method=trial.method, damp=trial.damp, sweep=name)
    if outcome["status"] == "done":
        res = outcome["result"]
        options = {**res.options, **trial.options}
        return store.record(**common, options=options, result=res)
    return store.record(**common, options={**trial.options, "device": trial.device},
                        status="failed", error=str(outcome.get("error") or "failed")[:4000])


def _run_local(plan_: Plan, todo: list[Trial], emit, stop) -> bool:
    for trial in todo:
        if stop():
            return True
        lay = plan_.layers[trial.layer_ref]
        emit(trial, run_trial(lay.weight, lay.hessian, trial))
    return False


def ray_runtime_env() -> dict:
    """The runtime environment a local Ray cluster's workers need to import this obsviz (the
    package's parent folder first on their path)."""
    root = str(Path(__file__).resolve().parent.parent)
    path = os.pathsep.join([root, *[p for p in os.environ.get("PYTHONPATH", "").split(
        os.pathsep) if p and p != root]])
    return {"env_vars": {"PYTHONPATH": path}}


def _ray_task(trial_fn: Callable):
    import ray

    @ray.remote
    def trial_task(layer_pair, trial: Trial) -> dict:
        W, H = layer_pair
        out = trial_fn(W, H, trial)
        if out["status"] == "done":  # plain data back: the driver writes files and the row
            r = out["result"]
            out = {"status": "done", "weight": r.weight, "mask": r.mask,
                   "rel_error": r.rel_error, "seconds": r.seconds, "method": r.method,
                   "options": r.options}
        return out

    return trial_task


def _ray_error_message(e: BaseException) -> str:
    """The task's own exception when it raised; else Ray's reason (a dead worker), one line."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}"
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return f"{type(e).__name__}: {' '.join(lines[:3])}" if lines else type(e).__name__


def _ray(address: str | None):
    """Ray, initialised: locally (``address=None``) or connected to a cluster, unless this
    process has done so already."""
    try:
        import ray
    except ImportError as e:
        raise ArgumentError("executor", "executor='ray' needs Ray (pip install 'ray>=2.30'); "
                            f"it could not be imported ({e})") from None
    if not ray.is_initialized():
        check_ray_address(address)
        ray.init(address=address, runtime_env=ray_runtime_env(), include_dashboard=False,
                 log_to_driver=False)
    return ray


#: Seconds a Ray head at ``address=`` has to accept a connection before the run gives up.
RAY_CONNECT_TIMEOUT_S = 5.0


def check_ray_address(address: str | None, timeout: float = RAY_CONNECT_TIMEOUT_S) -> None:
    """An ``ArgumentError("address")`` unless something accepts a connection at ``address``
    (``HOST:PORT``, ``HOST`` for Ray's port 6379, or ``ray://HOST:PORT``) within ``timeout``
    seconds: ``ray.init`` itself retries an absent head for minutes, printing only its log
    lines. ``None``, ``"auto"`` and ``"local"`` are Ray's own to resolve."""
    import socket

    if address is None or address in ("auto", "local"):
        return
    rest = address.removeprefix("ray://")
    host, colon, port_text = rest.rpartition(":") if ":" in rest.strip("[]") else (rest, "", "")
    host = host.strip("[]")
    try:
        port = int(port_text) if colon else (10001 if address.startswith("ray://") else 6379)
        if not (host and 0 < port < 65536):
            raise ValueError
    except ValueError:
        raise ArgumentError("address", f"address={address!r} is not HOST:PORT (e.g. "
                            "127.0.0.1:6379, or ray://HOST:10001)") from None
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        why = "connection refused" if isinstance(e, ConnectionRefusedError) else \
            f"no answer in {timeout:g} s" if isinstance(e, TimeoutError) else str(e)
        raise ArgumentError("address", f"no Ray head at {address!r} ({why}); start one there "
                            f"(ray start --head --port {port}) or leave the address out to run "
                            "Ray on this machine") from None


def _ray_device(ray, device: str | None) -> str:
    """The trials' device on the cluster: as asked, else CUDA when the cluster has GPUs."""
    if device is not None:
        return device
    return "cuda" if ray.cluster_resources().get("GPU", 0) > 0 else "cpu"


def ray_slots(ray, gpus: int) -> int:
    """How many tasks to keep in flight by default: twice the cluster's GPUs (GPU tasks) or
    CPUs."""
    res = ray.cluster_resources()
    slots = res.get("GPU", 0) if gpus else res.get("CPU", 1)
    return max(2, 2 * int(slots))


def ray_each(ray, task, items: list, args_of: Callable[[Any], tuple],
             on_out: Callable[[Any, dict], None], stop: Callable[[], bool],
             max_in_flight: int) -> bool:
    """Run ``task.remote(*args_of(item))`` for every item, at most ``max_in_flight`` at once, in
    order; ``on_out(item, out)`` as each ends, ``out`` being what the task returned, or
    ``{"status": "failed", "error": message}`` when it raised or its worker died past its
    retries. ``stop()`` turning true cancels the running tasks and submits no more (returns
    True). Anything raised here (Ctrl-C, a store error) leaves nothing running on the cluster.
    The one Ray loop of obsviz: sweeps, sensitivity scans and model runs use it."""
    queue = list(reversed(items))
    running: dict[Any, Any] = {}
    stopped = False
    try:
        while queue or running:
            while queue and len(running) < max_in_flight and not stopped:
                item = queue.pop()
                running[task.remote(*args_of(item))] = item
            if stop() and not stopped:
                stopped = True
                queue.clear()
                for ref in running:
                    ray.cancel(ref, force=False)
            ready, _ = ray.wait(list(running), num_returns=1, timeout=0.5)
            for ref in ready:
                item = running.pop(ref)
                try:
                    out = ray.get(ref)
                except ray.exceptions.TaskCancelledError:
                    continue
                except ray.exceptions.RayError as e:  # the task raised, or its worker died
                    out = {"status": "failed", "error": _ray_error_message(e)}
                on_out(item, out)
    except BaseException:
        for ref in running:
            ray.cancel(ref, force=True)
        raise
    return stopped


def _run_ray(plan_: Plan, todo: list[Trial], emit, stop, address: str | None,
             max_retries: int, trial_fn: Callable, max_in_flight: int | None) -> bool:
    ray = _ray(address)

    task = _ray_task(trial_fn)
    gpus = 1 if todo and todo[0].device == "cuda" else 0
    task = task.options(num_cpus=1, num_gpus=gpus, max_retries=max_retries,
                        retry_exceptions=False)
    layer_refs: dict[int, Any] = {}   # each layer in the object store once

    def args_of(trial: Trial) -> tuple:
        if trial.layer_ref not in layer_refs:
            lay = plan_.layers[trial.layer_ref]
            layer_refs[trial.layer_ref] = ray.put((lay.weight, lay.hessian))
        return layer_refs[trial.layer_ref], trial

    def on_out(trial: Trial, out: dict) -> None:
        if out["status"] == "done":
            out = {"status": "done", "result": PruneResult(
                weight=out["weight"], mask=out["mask"], error=out["rel_error"],
                seconds=out["seconds"], method=out["method"], options=out["options"])}
        emit(trial, out)

    return ray_each(ray, task, todo, args_of, on_out, stop,
                    max_in_flight or ray_slots(ray, gpus))


def sweep(spec: SweepSpec | dict | str | os.PathLike, executor: str = "local",
          store: RunStore | str | os.PathLike | None = None, address: str | None = None,
          progress: Callable[[SweepProgress], None] | None = None,
          stop: Callable[[], bool] | None = None, *, name: str | None = None,
          device: str | None = None, max_retries: int = 3, trial_fn: Callable = run_trial,
          max_in_flight: int | None = None,
          log: Callable[[str], None] = lambda m: None,
          warn: Callable[[str], None] | None = None, write_retries: int = 3,
          retry_wait_s: float = 2.0) -> SweepReport:
    """Run every trial of ``spec`` not yet done in ``store`` and record each as it ends.

    ``spec``: a :class:`SweepSpec`, a TOML file path or a dict (see the module docstring).
    ``executor``: ``"local"`` (in this process, in grid order) or ``"ray"`` (one Ray task per
    trial; ``ray.init()`` locally unless Ray is already initialised, or ``address=`` a cluster;
    one GPU per trial on CUDA; a trial whose worker dies is retried ``max_retries`` times).
    ``progress(SweepProgress)`` is called after each trial; ``stop()`` returning True ends the
    sweep after the trials running now (the rest are left for a later resume).
    A trial that raises is recorded as failed with its message; the others go on.
    ``warn(message)`` (default: ``log``) hears each of the plan's warnings (``Plan.warnings``:
    a choice that prunes nothing) before any trial runs. Layers of the same contents share
    their trials (``SweepReport.same_as``). Results the store does not take (locked past its
    busy timeout, a full disk) are kept and tried again after each trial and
    ``write_retries`` times at the end (``retry_wait_s`` apart); ``SweepReport.unwritten``
    lists those it never took. A read-only store is refused.
    """
    if executor not in EXECUTORS:
        raise ArgumentError("executor", f"executor={executor!r} is unknown; valid: "
                            f"{', '.join(EXECUTORS)}")
    if executor == "local" and address is not None:
        raise ArgumentError("address", "address= is for executor='ray'")
    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
        raise ArgumentError("max_retries", f"max_retries={max_retries!r} must be an integer >= 0")
    if isinstance(spec, dict):
        spec = parse_spec(spec)
    elif isinstance(spec, str | os.PathLike):
        spec = load_spec(spec)
    elif not isinstance(spec, SweepSpec):
        raise ArgumentError("spec", f"spec={type(spec).__name__} must be a SweepSpec, a dict "
                            "or the path of a TOML file")
    if not isinstance(store, RunStore):
        store = RunStore(store)
    if store.readonly:
        raise StoreError(f"store={str(store.path)!r} is read-only: a sweep's results could not "
                         "be kept; set OBSVIZ_STORE (or --store) to a file you can write")
    stop = stop or (lambda: False)
    name = name or spec.name
    t0 = time.perf_counter()
    if executor == "ray":
        ray = _ray(address)
        p = plan(spec, _ray_device(ray, device or spec.device), log, here=False)
    else:
        p = plan(spec, device, log)
    for message in p.warnings:
        (warn or log)(message)
    done_keys = store.done_keys([t.key for t in p.trials])
    ids: dict[int, int] = {}
    state = SweepProgress(total=len(p.trials))
    keeper = _Keeper(store)
    todo: list[Trial] = []
    shares: dict[str, list[Trial]] = {}   # key -> the later trials of that computation
    found_done: list[Trial] = []
    for t in p.trials:
        found = store.find(t.key) if t.key in done_keys else None
        if found is not None:
            ids[t.index] = found.id
            state.skipped += 1
            found_done.append(t)
        elif t.key in shares:   # a layer with the contents of an earlier one
            shares[t.key].append(t)
        else:
            shares[t.key] = []
            todo.append(t)
    if found_done:  # found done (maybe by another sweep): filed under this one too
        keeper.keep([t.label for t in found_done], lambda: store.add_to_sweep(
            name, [ids[t.index] for t in found_done], [t.layer for t in found_done]))
    notify = progress or (lambda s: None)
    start = time.perf_counter()
    state.elapsed_s = 0.0
    state.unwritten = len(keeper.unwritten())
    notify(state)

    def write(trial: Trial, outcome: dict) -> None:
        run_id = _record(store, p, trial, outcome, name)
        ids[trial.index] = run_id
        for other in shares[trial.key]:   # the same run, under each layer's own name
            if outcome["status"] == "done":
                store.add_to_sweep(name, [run_id], [other.layer])
                ids[other.index] = run_id
            else:
                ids[other.index] = _record(store, p, other, outcome, name)

    def emit(trial: Trial, outcome: dict) -> None:
        status = outcome["status"]
        if status == "done":
            state.done += 1
        else:
            state.failed += 1
        state.shared += len(shares[trial.key])
        keeper.keep([trial.label] + [t.label for t in shares[trial.key]],
                    lambda: write(trial, outcome))
        state.elapsed_s = time.perf_counter() - start
        state.last, state.last_status = trial.label, status
        state.unwritten = len(keeper.unwritten())
        notify(state)

    if executor == "local":
        stopped = _run_local(p, todo, emit, stop)
    else:
        stopped = _run_ray(p, todo, emit, stop, address, max_retries, trial_fn, max_in_flight)
    for _ in range(write_retries):
        if not keeper.pending:
            break
        time.sleep(retry_wait_s)
        keeper.flush()
    return SweepReport(name=name, store=str(store.path), executor=executor, total=len(p.trials),
                       done=state.done, failed=state.failed, skipped=state.skipped,
                       shared=state.shared, stopped=stopped,
                       seconds=time.perf_counter() - t0, run_ids=[ids[i] for i in sorted(ids)],
                       same_as=dict(p.same_as), unwritten=keeper.unwritten(),
                       thin=list(p.thin))


class _Keeper:
    """Writes to the store in order; a write the store refuses (a :class:`StoreError`: its
    lock held past the busy timeout, a full disk) waits, with every later one, and is tried
    again on the next ``keep`` or ``flush``: nothing computed is dropped while the process
    lives."""

    def __init__(self, store: RunStore) -> None:
        self.store = store
        self.pending: list[tuple[list[str], Callable[[], None]]] = []
        self.why = ""

    def keep(self, labels: list[str], write: Callable[[], None]) -> None:
        self.pending.append((labels, write))
        self.flush()

    def flush(self) -> None:
        while self.pending:
            try:
                self.pending[0][1]()
            except StoreError as e:
                self.why = str(e)
                return
            self.pending.pop(0)

    def unwritten(self) -> list[tuple[str, str]]:
        return [(label, self.why) for labels, _ in self.pending for label in labels]


def summary_table(store: RunStore, run_ids: Iterable[int]) -> list[dict]:
    """Per geometry (the name of what was run) × nnz × method × damp, in first-seen order:
    trials (one per layer: a run shared by two layers of equal contents counts for each),
    failed, ``sparsity`` (the fraction each scope prunes), mean ``rel_error`` and mean seconds
    of the finished ones (``None`` when none finished). Only like is averaged with like: never
    two sparsities, nnz values or dampings in one mean."""
    run_ids = sorted(run_ids)
    by_id = {r.id: r for r in store.runs(id=list(set(run_ids)))}
    groups: dict[tuple, list] = {}
    for run in (by_id[i] for i in run_ids if i in by_id):
        groups.setdefault((run.geometry, run.nnz, run.method, run.damp), []).append(run)

    def mean(xs: list[float]) -> float | None:
        return sum(xs) / len(xs) if xs else None

    out = []
    for (geometry, nnz, method, damp), runs in groups.items():
        done = [r for r in runs if r.status == "done"]
        out.append({"geometry": geometry, "nnz": nnz, "method": method, "damp": damp,
                    "sparsity": target_sparsity(runs[0].geometry_spec, nnz),
                    "trials": len(runs), "failed": len(runs) - len(done),
                    "rel_error": mean([r.rel_error for r in done]),
                    "seconds": mean([r.seconds for r in done])})
    return out


def target_sparsity(geometry_spec: dict, nnz: int) -> float | None:
    """The fraction of its blocks each scope prunes, ``(gs - nnz) / gs`` (``Geometry.sparsity``)
    from a stored geometry spec (``Geometry.to_dict()``): the sparsity of the rows pruned, a row
    sample or not. ``None`` when the spec has no scope (a geometry that could not be built)."""
    scope = geometry_spec.get("scope") if isinstance(geometry_spec, dict) else None
    if not isinstance(scope, list) or not scope:
        return None
    try:
        gs = math.prod(int(v) for v in scope)
        return (gs - int(nnz)) / gs if gs > 0 and 0 <= int(nnz) <= gs else None
    except (TypeError, ValueError):
        return None
