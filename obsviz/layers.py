"""Layers in and out: a weight ``W`` ``(M, K)`` plus its Hessian ``H = XᵀX / N`` ``(K, K)``.

One loader for every place that takes a user's layer (the app, the CLI, scripts). A layer file holds
one or more layers, each a set of keys::

    <name>.weight    (M, K)  2-D weight; conv weights (O, I, k...) are flattened to (O, I*k...)
    <name>.hessian   (K, K)  H = XᵀX / N                       } one of the two
    <name>.inputs    (N, K)  calibration inputs X, H built here }
    <name>.nsamples  ()      optional: the N behind H
    <name>.mask      (M, K)  optional: 0/1, 1 = kept (a pruned layer, see ``obsviz.save_pruned``)

A file with one bare ``weight`` + ``hessian``/``inputs`` pair is one layer named after the file.
Formats: ``.safetensors`` (preferred), ``.npz`` (no pickles), ``.pt``/``.pth`` (``torch.load`` with
``weights_only=True``: tensors and plain containers only, never arbitrary objects). Every bad file
raises :class:`LayerFileError` naming the file, the layer, what is wrong and what would be valid.
"""

from __future__ import annotations

import functools
import io
import json
import math
import os
import pickle
import pickletools
import re
import struct
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from obsviz.hessian import HessianAccumulator, samples_text, thin_text

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_SAMPLE",
    "FORMATS",
    "SAMPLE_DIR",
    "Layer",
    "LayerFileError",
    "LayerInfo",
    "list_layers",
    "load_layer",
    "load_layers",
    "load_sample_layer",
    "sample_layer_names",
    "save_layers",
]

FORMATS = (".safetensors", ".npz", ".pt", ".pth")
ROLES = ("weight", "hessian", "inputs", "nsamples", "mask")
MAX_BYTES_ENV = "OBSVIZ_MAX_UPLOAD_BYTES"
_BUILTIN_MAX_BYTES = 512 * 2**20
# safetensors metadata keys written by save_layers
# one metadata key holding JSON {"layers": [names in order], "source": {name: str},
# "notes": {name: [str]}}: one key, because safetensors writes several in no fixed order
_META_KEY = "obsviz"
# rows of calibration inputs turned into H per step
_INPUT_BATCH = 8192


def _max_bytes_from_env() -> int:
    raw = os.environ.get(MAX_BYTES_ENV)
    if raw is None or raw.strip() == "":
        return _BUILTIN_MAX_BYTES
    try:
        value = int(raw)
        if value <= 0:
            raise ValueError
    except ValueError:
        warnings.warn(f"{MAX_BYTES_ENV}={raw!r} is not a positive integer (bytes); using the "
                      f"default {_BUILTIN_MAX_BYTES}", stacklevel=2)
        return _BUILTIN_MAX_BYTES
    return value


DEFAULT_MAX_BYTES: int = _max_bytes_from_env()
"""Largest layer file accepted, in bytes: 512 MiB unless ``OBSVIZ_MAX_UPLOAD_BYTES`` says so.
The same limit caps the ``(K, K)`` Hessian a file holds (float32) or has built (float64)."""

SAMPLE_DIR: Path = Path(__file__).resolve().parent.parent / "sample_data"
SAMPLE_FILE = "minilm_l6.safetensors"
TOY_FILE = "toy.safetensors"
DEFAULT_SAMPLE: str = "layer0.query"


class LayerFileError(ValueError):
    """A layer file that cannot be used; the message says which file, which layer, what is wrong
    and what would be valid."""


@dataclass
class Layer:
    """A weight ``(M, K)`` float32 and its Hessian ``(K, K)`` float32 (symmetric PSD); ``mask``
    ``(M, K)`` bool (True = kept) when the file is a pruned layer. ``hessian`` is ``None`` only
    for a pruned layer saved without one, loaded with ``require_hessian=False``."""

    name: str
    weight: torch.Tensor
    hessian: torch.Tensor | None
    nsamples: int = 0
    source: str = ""
    notes: list[str] = field(default_factory=list)
    mask: torch.Tensor | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.weight.shape[0]), int(self.weight.shape[1]))

    @property
    def samples_text(self) -> str:
        """N beside K (``obsviz.hessian.samples_text``): ``nsamples`` 0 is "not recorded"."""
        return samples_text(self.nsamples, self.shape[1])

    @property
    def thin_text(self) -> str | None:
        """The thin-calibration warning when the file records N < K (``obsviz.hessian``)."""
        return thin_text(self.nsamples, self.shape[1], self.name)


@dataclass
class LayerInfo:
    """What :func:`list_layers` tells about a layer without loading its tensors."""

    name: str
    weight_shape: tuple[int, int]
    hessian_source: str  # "hessian (K, K)" or "inputs (N, K)"


# --------------------------------------------------------------------------------------------
# Readers: one per format, all answering keys / shape / get / row batches.


class _Reader:
    _meta_cache: dict | None = None  # _obsviz_meta's parse, once per reader

    def keys(self) -> list[str]:
        raise NotImplementedError

    def shape(self, key: str) -> tuple[int, ...]:
        raise NotImplementedError

    def get(self, key: str) -> torch.Tensor:
        raise NotImplementedError

    def rows(self, key: str, batch: int) -> Iterator[torch.Tensor]:
        """The tensor in batches of leading rows (so ``(N, K)`` inputs need not fit at once)."""
        t = self.get(key)
        for i in range(0, t.shape[0], batch):
            yield t[i:i + batch]

    def metadata(self) -> dict[str, str]:
        return {}


class _DictReader(_Reader):
    def __init__(self, tensors: dict[str, torch.Tensor], meta: dict[str, str] | None = None):
        self.tensors = tensors
        self.meta = meta or {}

    def keys(self) -> list[str]:
        return list(self.tensors)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.tensors[key].shape)

    def get(self, key: str) -> torch.Tensor:
        return self.tensors[key]

    def metadata(self) -> dict[str, str]:
        return self.meta


class _SafetensorsFileReader(_Reader):
    """Reads shapes from the header and tensors (or row slices) on demand."""

    def __init__(self, path: Path, keys: list[str], meta: dict[str, str]):
        from safetensors import safe_open

        self.handle = safe_open(str(path), framework="pt")
        self._keys = keys  # the header's order, not safe_open's (sorted by name)
        self.meta = meta

    def keys(self) -> list[str]:
        return self._keys

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.handle.get_slice(key).get_shape())

    def get(self, key: str) -> torch.Tensor:
        return self.handle.get_tensor(key)

    def rows(self, key: str, batch: int) -> Iterator[torch.Tensor]:
        sl = self.handle.get_slice(key)
        n = sl.get_shape()[0]
        for i in range(0, n, batch):
            yield sl[i:i + batch]

    def metadata(self) -> dict[str, str]:
        return self.meta


def _check_size(nbytes: int, max_bytes: int, display: str, what: str = "is") -> None:
    if nbytes > max_bytes:
        raise LayerFileError(
            f"{display}: file {what} {_fmt_bytes(nbytes)}, over the limit of "
            f"{_fmt_bytes(max_bytes)}; pass a larger max_bytes or set {MAX_BYTES_ENV}")


def _fmt_bytes(n: int) -> str:
    if n < 2**20:
        return f"{n} bytes"
    return f"{n / 2**20:.1f} MiB ({n} bytes)"


def _reason(e: BaseException) -> str:
    """What a library said about a bad file, fit to show a user: its first line, no filesystem
    paths (they become their last part), at most 160 characters."""
    lines = str(e).strip().splitlines()
    text = re.sub(r"(?:[A-Za-z]:)?[\\/](?:[^\s'\"\\/:]+[\\/])+([^\s'\"\\/:]*)", r"\1",
                  lines[0] if lines else "")
    text = text or type(e).__name__
    return text if len(text) <= 160 else text[:157] + "..."


#: How deep and how big a ``.pt`` container may be: a layer file is a flat or shallow dict of
#: tensors, so anything past these is refused before it costs time or memory.
MAX_CONTAINER_DEPTH = 16
MAX_CONTAINER_ENTRIES = 10_000


def _flatten_container(obj: object, display: str) -> dict[str, torch.Tensor]:
    """Nested dicts/lists of tensors -> ``{"a.b": tensor}``, walked without recursion.

    Keeps tensors (and numpy arrays) plus plain numbers under a ``nsamples`` key; other numbers,
    strings and ``None`` are skipped. Refuses containers nested deeper than
    ``MAX_CONTAINER_DEPTH`` or holding more than ``MAX_CONTAINER_ENTRIES`` entries in all.
    """
    out: dict[str, torch.Tensor] = {}
    stack: list[tuple[str, object, int]] = [("", obj, 0)]
    seen = 0
    while stack:
        prefix, item, depth = stack.pop()
        if isinstance(item, torch.Tensor):
            out[prefix] = item
        elif isinstance(item, np.ndarray):
            out[prefix] = torch.from_numpy(item)
        elif isinstance(item, int | float) and not isinstance(item, bool):
            if prefix.rpartition(".")[2] == "nsamples":  # huge or NaN: _nsamples refuses it
                out[prefix] = torch.tensor(float(item) if abs(item) <= 2**53 else math.inf,
                                           dtype=torch.float64)
        elif isinstance(item, dict | list | tuple):
            if depth >= MAX_CONTAINER_DEPTH:
                raise LayerFileError(
                    f"{display}: containers nested more than {MAX_CONTAINER_DEPTH} deep (at "
                    f"{prefix or 'the top'!r}); a layer file is a dict of tensors such as "
                    "{'name.weight': W, 'name.hessian': H}")
            pairs = item.items() if isinstance(item, dict) else enumerate(item)
            seen += len(item)
            if seen > MAX_CONTAINER_ENTRIES:
                raise LayerFileError(
                    f"{display}: holds more than {MAX_CONTAINER_ENTRIES:,} container entries; a "
                    "layer file is a dict of a few tensors per layer (store numbers as tensors, "
                    "not Python lists)")
            # reversed: the stack pops them in file order
            children = [(f"{prefix}.{k}" if prefix else str(k), v, depth + 1) for k, v in pairs]
            stack.extend(reversed(children))
        # strings, None, flags and other numbers: not layer data, skipped
    return out


def _zip_uncompressed_size(data: bytes | Path) -> int | None:
    """Total unpacked size of a zip archive (npz, torch's zip format), None if not a zip."""
    src = io.BytesIO(data) if isinstance(data, bytes) else data
    if not zipfile.is_zipfile(src):
        return None
    with zipfile.ZipFile(io.BytesIO(data) if isinstance(data, bytes) else data) as zf:
        return sum(info.file_size for info in zf.infolist())


def _open(path_or_bytes: str | os.PathLike | bytes, filename: str | None,
          max_bytes: int) -> tuple[_Reader, str, str]:
    """Size check, then the reader for the file's format. Returns ``(reader, display, stem)``."""
    if isinstance(path_or_bytes, bytes | bytearray | memoryview):
        if filename is None:
            raise LayerFileError(
                "raw bytes need filename=... so the format can be told from its extension "
                f"(one of {', '.join(FORMATS)})")
        display = filename
        nbytes = memoryview(path_or_bytes).nbytes
        data = path_or_bytes
        path = None
    else:
        path = Path(path_or_bytes)
        display = filename or path.name
        if not path.is_file():
            raise LayerFileError(f"{path}: no such file")
        nbytes = path.stat().st_size
        data = None
    ext = "".join(Path(display).suffixes[-1:]).lower()
    stem = Path(display).stem
    if ext not in FORMATS:
        raise LayerFileError(
            f"{display}: unknown format {ext or '(no extension)'!r}; layer files are "
            f"{', '.join(FORMATS)} (.safetensors preferred)")
    _check_size(nbytes, max_bytes, display)  # before anything is read or parsed
    src = bytes(data) if data is not None else path

    if ext == ".safetensors":
        return _open_safetensors(src, display), display, stem
    unpacked = _zip_uncompressed_size(src)
    if unpacked is not None:
        _check_size(unpacked, max_bytes, display, what="unpacks to")
    if ext == ".npz":
        return _open_npz(src, display, max_bytes), display, stem
    return _open_torch(src, display, max_bytes), display, stem


def _open_safetensors(src: bytes | Path, display: str) -> _Reader:
    from safetensors import SafetensorError
    from safetensors.torch import load

    if isinstance(src, Path):
        with open(src, "rb") as f:
            keys, meta = _safetensors_header(f.read(8), f.read, display)
    else:
        view = memoryview(src)
        keys, meta = _safetensors_header(bytes(view[:8]), lambda n: bytes(view[8:8 + n]),
                                         display)
    try:
        if isinstance(src, Path):
            return _SafetensorsFileReader(src, keys, meta)
        tensors = load(src)
    except (SafetensorError, ValueError, OSError, RuntimeError) as e:
        raise LayerFileError(f"{display}: not a readable safetensors file ({_reason(e)})") from e
    return _DictReader({k: tensors[k] for k in keys}, meta)


#: Largest safetensors JSON header read (a layer file's header is ~100 bytes a tensor) and how
#: deep it may nest (a valid one nests 3 deep).
MAX_HEADER_BYTES = 16 * 2**20
MAX_HEADER_DEPTH = 8


def _safetensors_header(first8: bytes, read, display: str) -> tuple[list[str], dict[str, str]]:
    """Tensor names in the header's order and the ``__metadata__`` strings, parsed here with a
    size cap and a nesting check made before ``json.loads`` (so neither a huge nor a 100 000-deep
    header costs memory, time or recursion), then checked for the layout safetensors defines."""
    def bad(why: str) -> LayerFileError:
        return LayerFileError(f"{display}: not a readable safetensors file ({why})")

    if len(first8) < 8:
        raise bad("too short for a safetensors header")
    n = int.from_bytes(first8, "little")
    if n > MAX_HEADER_BYTES:
        raise bad(f"its header declares {n} bytes, over the {MAX_HEADER_BYTES} read at most")
    raw = read(n)
    if len(raw) < n:
        raise bad("the file ends inside its header")
    text = raw.decode("utf-8", errors="replace")
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', '""', text)  # strings out: their brackets don't nest
    steps = np.frombuffer(bare.encode("ascii", errors="replace"), dtype=np.uint8)
    depth = np.cumsum((steps == ord("{")) | (steps == ord("[")), dtype=np.int64) - np.cumsum(
        (steps == ord("}")) | (steps == ord("]")), dtype=np.int64)
    if depth.size and int(depth.max()) > MAX_HEADER_DEPTH:
        raise bad(f"its header nests {int(depth.max())} deep; a safetensors header nests 3 deep")
    try:
        header = json.loads(text)
    except ValueError as e:
        raise bad(f"its header is not JSON: {_reason(e)}") from e
    if not isinstance(header, dict):
        raise bad(f"its header is a JSON {type(header).__name__}, not an object of tensors")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise bad("its __metadata__ is not an object of strings")
    for key, entry in header.items():
        if not (isinstance(entry, dict) and isinstance(entry.get("shape"), list)
                and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                        for d in entry["shape"])):
            raise bad(f"tensor {key!r} in its header has no valid shape")
    return list(header), meta


def _open_npz(src: bytes | Path, display: str, max_bytes: int = DEFAULT_MAX_BYTES) -> _Reader:
    if not zipfile.is_zipfile(io.BytesIO(src) if isinstance(src, bytes) else src):
        raise LayerFileError(f"{display}: not a readable .npz archive (not a zip file); save one "
                             "with np.savez(path, **arrays)")
    _check_npy_headers(src, display, max_bytes)
    try:
        with np.load(io.BytesIO(src) if isinstance(src, bytes) else src,
                     allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except ValueError as e:
        if "allow_pickle" in str(e) or "object" in str(e).lower():
            raise LayerFileError(
                f"{display}: holds object arrays, which need unpickling; obsviz never unpickles. "
                "Save plain numeric arrays (np.savez with float arrays)") from e
        raise LayerFileError(f"{display}: not a readable .npz archive ({_reason(e)})") from e
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise LayerFileError(f"{display}: not a readable .npz archive ({_reason(e)})") from e
    tensors = {}
    for k, a in arrays.items():
        if a.dtype.kind not in "fiub":
            raise LayerFileError(
                f"{display}: array {k!r} has dtype {a.dtype}; layer arrays must be real numbers")
        tensors[k] = torch.from_numpy(np.ascontiguousarray(a))
    return _DictReader(tensors)


def _npz_member_name(filename: str) -> str:
    """The array name numpy gives a member (``"x.weight.npy"`` and ``"x.weight"`` are both
    ``"x.weight"``)."""
    return filename[:-4] if filename.endswith(".npy") else filename


def _check_npy_headers(src: bytes | Path, display: str, limit: int) -> None:
    """Every member's bytes from its ``.npy`` header (shape × itemsize), before any is read: a tiny
    member may declare 10¹² elements. Every member counts, whatever its name (numpy reads a member
    without the ``.npy`` suffix as an array too); a member must be an ``.npy`` array, hold the
    bytes its header declares, and name an array no other member names."""
    total = 0
    seen: set[str] = set()
    try:
        with zipfile.ZipFile(io.BytesIO(src) if isinstance(src, bytes) else src) as zf:
            for info in zf.infolist():
                name = _npz_member_name(info.filename)
                if name in seen:
                    raise LayerFileError(
                        f"{display}: two members hold array {name!r} ({info.filename!r} and "
                        "another); each array is stored once")
                seen.add(name)
                with zf.open(info) as f:
                    if f.read(6) != np.lib.format.MAGIC_PREFIX:
                        raise LayerFileError(
                            f"{display}: member {info.filename!r} is not an .npy array; an .npz "
                            "holds only arrays (np.savez(path, **arrays))")
                    f.seek(0)
                    version = np.lib.format.read_magic(f)
                    if version == (1, 0):
                        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
                    else:
                        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
                    start = f.tell()
                nbytes = math.prod(shape) * dtype.itemsize
                if nbytes > info.file_size - start:
                    raise LayerFileError(
                        f"{display}: array {name!r} declares shape {tuple(shape)} "
                        f"({_fmt_bytes(nbytes)}) but its member holds "
                        f"{_fmt_bytes(max(0, info.file_size - start))}; the file is truncated or "
                        "forged")
                total += nbytes
                if total > limit:
                    raise LayerFileError(
                        f"{display}: its arrays declare {_fmt_bytes(total)} (array "
                        f"{name!r} has shape {tuple(shape)}), over the limit of "
                        f"{_fmt_bytes(limit)}")
    except LayerFileError:
        raise
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise LayerFileError(f"{display}: not a readable .npz archive ({_reason(e)})") from e


#: Largest pickle part of a ``.pt`` file: a layer file's pickle holds names and tensor
#: references (~100 bytes a tensor), its numbers are in separate storage records.
MAX_PICKLE_BYTES = 4 * 2**20


def _check_pickle_size(src: bytes | Path, display: str) -> None:
    """Refuse, before unpickling, a ``.pt`` whose pickle is larger than ``MAX_PICKLE_BYTES``
    (e.g. millions of Python numbers): read from the zip directory, or for the legacy format by
    walking the opcodes without running them, stopping at the limit."""
    stream = io.BytesIO(src) if isinstance(src, bytes) else open(src, "rb")
    with stream:
        if zipfile.is_zipfile(stream):
            stream.seek(0)
            with zipfile.ZipFile(stream) as zf:
                size = sum(i.file_size for i in zf.infolist() if i.filename.endswith(".pkl"))
        else:
            stream.seek(0)
            size = 0
            try:
                for _ in range(4):  # legacy: magic, protocol, sys info, then the object
                    for _op in pickletools.genops(stream):
                        if stream.tell() > MAX_PICKLE_BYTES:
                            break
                    if stream.tell() > MAX_PICKLE_BYTES:
                        break
            except (ValueError, EOFError, pickle.UnpicklingError, UnicodeDecodeError,
                    struct.error):
                pass  # not a pickle stream: torch.load says so
            size = stream.tell()
    if size > MAX_PICKLE_BYTES:
        raise LayerFileError(
            f"{display}: its pickle part is over {_fmt_bytes(MAX_PICKLE_BYTES)}; a layer file is a "
            "dict of a few tensors per layer (store numbers as tensors, not Python lists)")


def _check_tensor(t: torch.Tensor, display: str, key: str) -> torch.Tensor:
    """A dense CPU tensor of real numbers whose elements each have their own bytes, or
    :class:`LayerFileError` (sparse, quantized, meta and nested tensors would otherwise fail deep
    inside torch; an expanded or overlapping view would make a tiny file stand for any size)."""
    kind = ("sparse" if t.layout != torch.strided else "quantized" if t.is_quantized
            else "meta" if t.is_meta else "nested" if t.is_nested
            else None if t.device.type == "cpu" else f"on {t.device.type}")
    if kind is not None:
        raise LayerFileError(
            f"{display}: {key!r} is a {kind} tensor; layer tensors must be dense real numbers")
    if not _dense_strides(t):
        raise LayerFileError(
            f"{display}: {key!r} has shape {tuple(t.shape)} with strides {t.stride()}: a view "
            "that reuses or skips its stored numbers (e.g. made by expand()), so its size does "
            "not come from the file's bytes; save it with .contiguous()")
    return t


def _dense_strides(t: torch.Tensor) -> bool:
    """Whether every element of ``t`` has its own place in memory and no place is skipped: its
    strides are a contiguous layout's, in some order of the dims (a transpose is fine; zero,
    repeated or gapped strides are not). Then ``t`` is never larger than what stores it."""
    expected = 1
    for stride, size in sorted((st, sz) for sz, st in zip(t.shape, t.stride(), strict=True)
                               if sz != 1):
        if size == 0:
            return True
        if stride != expected:
            return False
        expected *= size
    return True


def _open_torch(src: bytes | Path, display: str, max_bytes: int = DEFAULT_MAX_BYTES
                ) -> _Reader:
    _check_pickle_size(src, display)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "pickle protocol 4": the refusal says enough
            obj = torch.load(io.BytesIO(src) if isinstance(src, bytes) else src,
                             map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if found is None:
            op = re.search(r"Unsupported operand \d+", str(e))
            raise LayerFileError(
                f"{display}: not a readable torch file: torch.load(weights_only=True) cannot parse "
                f"it ({op.group(0) if op else 'not a torch.save file'}); save a dict of tensors "
                "with torch.save, or better, a .safetensors file") from e
        why = f"it names {found.group(1)}"
        raise LayerFileError(
            f"{display}: torch.load(weights_only=True) refused it: the pickle holds objects other "
            f"than tensors and plain containers ({why}). obsviz never unpickles arbitrary objects; "
            "save a dict of tensors (torch.save({'name.weight': W, 'name.hessian': H}, f)) or, "
            "better, a .safetensors file") from e
    except (RuntimeError, EOFError, OSError, ValueError, NotImplementedError, MemoryError,
            AttributeError, TypeError, KeyError, IndexError, zipfile.BadZipFile) as e:
        raise LayerFileError(f"{display}: not a readable torch file ({_reason(e)})") from e
    tensors = {k: _check_tensor(t, display, k)
               for k, t in _flatten_container(obj, display).items()}
    # views of one stored array may share it: count each tensor's own size
    _check_size(sum(t.numel() * t.element_size() for t in tensors.values()), max_bytes, display,
                what="holds tensors of")
    if not tensors:
        raise LayerFileError(
            f"{display}: holds no tensors (found {type(obj).__name__}); save a dict of tensors "
            "such as {'name.weight': W, 'name.hessian': H}")
    return _DictReader(tensors)


# --------------------------------------------------------------------------------------------
# From keys to layers


def _split_key(key: str) -> tuple[str, str | None]:
    """``"a.b.weight"`` -> ``("a.b", "weight")``; a bare ``"weight"`` -> ``("", "weight")``."""
    prefix, _, role = key.rpartition(".")
    if role in ROLES:
        return prefix, role
    return key, None


def _obsviz_meta(reader: _Reader) -> dict:
    """What save_layers recorded (order, sources, notes); {} for other files or bad JSON. Parsed
    once per reader: a file of thousands of layers is not parsed again for each."""
    if reader._meta_cache is None:
        raw = reader.metadata().get(_META_KEY)
        try:
            meta = json.loads(raw) if raw else {}
        except (ValueError, RecursionError):  # bad or absurdly nested JSON: not ours
            meta = {}
        kinds = {"layers": list, "source": dict, "notes": dict}
        reader._meta_cache = {k: meta[k] for k, kind in kinds.items()
                              if isinstance(meta, dict) and isinstance(meta.get(k), kind)}
    return reader._meta_cache


def _layer_keys(reader: _Reader, display: str, stem: str, require_hessian: bool = True
                ) -> dict[str, dict[str, str]]:
    """``{layer name: {role: key}}`` in file order (or the order save_layers recorded). With
    ``require_hessian=False`` a weight with a mask and no Hessian (a pruned layer) counts too."""
    groups: dict[str, dict[str, str]] = {}
    for key in reader.keys():
        prefix, role = _split_key(key)
        if role is not None:
            groups.setdefault(prefix, {})[role] = key
    layers = {}
    masked_only: list[str] = []  # pruned layers saved without a Hessian
    for prefix, roles in groups.items():
        name = prefix or stem
        has_h = "hessian" in roles or "inputs" in roles
        if has_h and "weight" not in roles:
            h_key = roles.get("hessian", roles.get("inputs"))
            raise LayerFileError(
                f"{display}, layer {name!r}: has {h_key!r} but no 2-D weight; add "
                f"'{prefix + '.' if prefix else ''}weight' (M, K)")
        if not has_h and "weight" in roles and "mask" in roles:
            if require_hessian:
                masked_only.append(name)
                continue
            has_h = True
        if has_h:
            if name in layers:
                raise LayerFileError(f"{display}: two layers named {name!r} (bare keys and "
                                     f"'{name}.*'); rename one")
            layers[name] = roles
    if not layers and masked_only:
        raise LayerFileError(
            f"{display}, layer {masked_only[0]!r}: a pruned weight and mask with no Hessian; "
            "pruning or comparing needs '<name>.hessian' (K, K) (load_layer(..., "
            "require_hessian=False) reads the weight and mask)")
    if not layers:
        found = ", ".join(f"{k} {reader.shape(k)}" for k in reader.keys()[:12])
        more = " …" if len(reader.keys()) > 12 else ""
        raise LayerFileError(
            f"{display}: no layer found. A layer is '<name>.weight' (M, K) plus "
            f"'<name>.hessian' (K, K) or '<name>.inputs' (N, K) (bare 'weight' + 'hessian' for a "
            f"single layer); found: {found or 'nothing'}{more}")
    order = _obsviz_meta(reader).get("layers")
    if isinstance(order, list):
        wanted = list(dict.fromkeys(n for n in order if isinstance(n, str) and n in layers))
        placed = set(wanted)
        rest = [n for n in layers if n not in placed]
        layers = {n: layers[n] for n in wanted + rest}
    return layers


def _weight_shape(shape: tuple[int, ...], display: str, name: str, key: str) -> tuple[
        tuple[int, int], str | None]:
    """The 2-D shape a weight is used at, and a note when a conv weight was flattened."""
    if len(shape) == 2:
        return (shape[0], shape[1]), None
    if 3 <= len(shape) <= 5:
        K = math.prod(shape[1:])
        dims = ("O", "I", "kh", "kw", "kd")[:len(shape)] if len(shape) > 3 else ("O", "I", "k")
        note = (f"conv weight ({', '.join(dims)}) = {tuple(shape)} flattened to "
                f"(O, {'*'.join(dims[1:])}) = {(shape[0], K)}")
        return (shape[0], K), note
    raise LayerFileError(
        f"{display}, layer {name!r}: no 2-D weight: {key!r} has shape {tuple(shape)}; a weight "
        "must be 2-D (M, K), or a 3-D/4-D/5-D conv weight (O, I, k...) to be flattened")


def _input_shape(shape: tuple[int, ...], display: str, name: str, key: str, K: int) -> tuple[
        int, int]:
    """Inputs are ``(N, K)`` or ``(B, T, K)`` (flattened to ``(B*T, K)``)."""
    if len(shape) not in (2, 3) or shape[-1] != K:
        raise LayerFileError(
            f"{display}, layer {name!r}: inputs {key!r} have shape {tuple(shape)} but the weight "
            f"has K = {K} columns; inputs must be (N, {K}) (or (B, T, {K}))")
    return (math.prod(shape[:-1]), K)


def _info(reader: _Reader, display: str, name: str, roles: dict[str, str],
          max_bytes: int = DEFAULT_MAX_BYTES) -> LayerInfo:
    (M, K), _ = _weight_shape(reader.shape(roles["weight"]), display, name, roles["weight"])
    if M == 0 or K == 0:
        raise LayerFileError(
            f"{display}, layer {name!r}: weight {roles['weight']!r} is {(M, K)}, empty; a weight "
            "is (M, K) with M, K >= 1")
    _check_elements(M * K, 4, max_bytes, display, name, f"weight {roles['weight']!r}",
                    f"(M, K) = {(M, K)}")
    if "mask" in roles and tuple(reader.shape(roles["mask"])) != (M, K):
        raise LayerFileError(
            f"{display}, layer {name!r}: mask {roles['mask']!r} has shape "
            f"{tuple(reader.shape(roles['mask']))} but the weight is {(M, K)}; they must match")
    if "hessian" not in roles and "inputs" not in roles:
        return LayerInfo(name, (M, K), "none (pruned weight and mask only)")
    if "hessian" in roles:
        hs = reader.shape(roles["hessian"])
        if hs != (K, K):
            raise LayerFileError(
                f"{display}, layer {name!r}: Hessian {roles['hessian']!r} has shape {hs} but the "
                f"weight is {(M, K)}; the Hessian must be (K, K) = {(K, K)}")
        _check_elements(K * K, 4, max_bytes, display, name, f"Hessian {roles['hessian']!r}",
                        f"(K, K) with K = {K}")
        return LayerInfo(name, (M, K), f"hessian ({K}, {K})")
    N, _ = _input_shape(reader.shape(roles["inputs"]), display, name, roles["inputs"], K)
    if N == 0:  # from the shape, before the (K, K) accumulator is allocated
        raise LayerFileError(
            f"{display}, layer {name!r}: inputs {roles['inputs']!r} are empty (N = 0); need "
            f"(N, {K}) with N >= 1")
    _check_elements(K * K, 8, max_bytes, display, name,
                    f"the Hessian built from inputs {roles['inputs']!r}", f"(K, K) with K = {K}")
    return LayerInfo(name, (M, K), f"inputs ({N}, {K})")


def _check_elements(count: int, itemsize: int, max_bytes: int, display: str, name: str,
                    what: str, shape: str) -> None:
    """Refuse, from the shape alone, a tensor the loader would make bigger than ``max_bytes``: the
    float32 weight, the float32 Hessian, or the float64 ``(K, K)`` one a small file of inputs
    ``(N, K)`` would make it build."""
    nbytes = count * itemsize
    if nbytes > max_bytes:
        dtype = "float64" if itemsize == 8 else "float32"
        raise LayerFileError(
            f"{display}, layer {name!r}: {what} is {shape}, {_fmt_bytes(nbytes)} as {dtype}, "
            f"over the limit of {_fmt_bytes(max_bytes)}; use a smaller layer, pass a larger "
            f"max_bytes or set {MAX_BYTES_ENV}")


def _as_float32(t: torch.Tensor, display: str, name: str, key: str) -> torch.Tensor:
    if t.is_complex() or t.dtype == torch.bool:
        raise LayerFileError(
            f"{display}, layer {name!r}: {key!r} has dtype {t.dtype}; expected real numbers")
    t = t.to(torch.float32)
    _check_finite(t, display, name, key)
    return t


def _check_finite(t: torch.Tensor, display: str, name: str, key: str) -> None:
    bad = ~torch.isfinite(t)
    if bool(bad.any()):
        n_nan = int(torch.isnan(t).sum())
        n_inf = int(bad.sum()) - n_nan
        raise LayerFileError(
            f"{display}, layer {name!r}: {key!r} has non-finite values ({n_nan} NaN, {n_inf} inf "
            f"of {t.numel()}); every value must be finite")


def _nsamples(reader: _Reader, display: str, name: str, key: str) -> int:
    t = reader.get(key)
    if t.numel() != 1 or t.is_complex() or not bool(torch.isfinite(t.double()).all()):
        raise LayerFileError(
            f"{display}, layer {name!r}: {key!r} must be one non-negative count, got shape "
            f"{tuple(t.shape)}")
    v = float(t.reshape(()).item())
    if v < 0 or v != int(v) or v > MAX_NSAMPLES:
        raise LayerFileError(
            f"{display}, layer {name!r}: {key!r} must be a non-negative integer up to "
            f"{MAX_NSAMPLES:,}, got {v:.6g}")
    return int(v)


#: Largest ``nsamples`` a file may record: the count of calibration rows, exact as a float64.
MAX_NSAMPLES = 2**53


def _symmetric(H: torch.Tensor, display: str, name: str, key: str) -> torch.Tensor:
    """Symmetrise round-off; refuse a Hessian that is not symmetric or has a negative diagonal."""
    scale = float(H.abs().max()) if H.numel() else 0.0
    asym = float((H - H.T).abs().max()) if H.numel() else 0.0
    if asym > 1e-3 * scale + 1e-12:
        raise LayerFileError(
            f"{display}, layer {name!r}: Hessian {key!r} is not symmetric (max |H - Hᵀ| = "
            f"{asym:.3g}, max |H| = {scale:.3g}); H = XᵀX / N is symmetric positive semi-definite")
    d = torch.diagonal(H)
    if bool((d < 0).any()):
        raise LayerFileError(
            f"{display}, layer {name!r}: Hessian {key!r} has {int((d < 0).sum())} negative "
            "diagonal entries; H = XᵀX / N has a non-negative diagonal")
    return (H + H.T) / 2 if asym > 0 else H


def _load(reader: _Reader, display: str, name: str, roles: dict[str, str],
          max_bytes: int = DEFAULT_MAX_BYTES) -> Layer:
    # shape and size checks first, before tensors are read or H is allocated
    info = _info(reader, display, name, roles, max_bytes)
    M, K = info.weight_shape
    notes: list[str] = []
    w_key = roles["weight"]
    W = _as_float32(reader.get(w_key), display, name, w_key)
    if W.dim() != 2:
        _, note = _weight_shape(tuple(W.shape), display, name, w_key)
        notes.append(note)
        W = W.reshape(M, K)
    nsamples = _nsamples(reader, display, name, roles["nsamples"]) if "nsamples" in roles else 0
    mask = _mask(reader, display, name, roles["mask"]) if "mask" in roles else None
    H = None
    if "hessian" in roles:
        h_key = roles["hessian"]
        H = _symmetric(_as_float32(reader.get(h_key), display, name, h_key), display, name, h_key)
        if "inputs" in roles:
            notes.append(f"{roles['inputs']!r} ignored: the file also has Hessian {h_key!r}")
    elif "inputs" in roles:
        x_key = roles["inputs"]
        acc = HessianAccumulator(K)
        for X in reader.rows(x_key, max(1, _INPUT_BATCH)):
            X = _as_float32(X, display, name, x_key).reshape(-1, K)
            acc.add(X)
        if acc.nsamples == 0:
            raise LayerFileError(
                f"{display}, layer {name!r}: inputs {x_key!r} are empty (N = 0); need (N, {K}) "
                "with N >= 1")
        H = acc.result()
        if not bool(torch.isfinite(H).all()):
            raise LayerFileError(
                f"{display}, layer {name!r}: H = XᵀX / N built from inputs {x_key!r} overflows "
                "float32 (the inputs are too large); scale the inputs down or store the Hessian")
        if nsamples and nsamples != acc.nsamples:
            notes.append(f"{roles['nsamples']!r} = {nsamples} replaced by the N = {acc.nsamples} "
                         "rows of the inputs")
        nsamples = acc.nsamples
        notes.append(f"H = XᵀX / N built from inputs ({nsamples}, {K})")
    meta = _obsviz_meta(reader)
    extra = meta.get("notes", {}).get(name, [])
    notes.extend(str(n) for n in (extra if isinstance(extra, list) else [extra]))
    described = meta.get("source", {}).get(name)
    described = str(described) if described else None
    source = f"{display} ({described})" if described else display
    return Layer(name=name, weight=W.contiguous(),
                 hessian=None if H is None else H.contiguous(), nsamples=nsamples,
                 source=source, notes=notes, mask=mask)


def _mask(reader: _Reader, display: str, name: str, key: str) -> torch.Tensor:
    """A stored mask as ``(M, K)`` bool; only 0 and 1 (or False/True) are valid values."""
    m = reader.get(key)
    if m.dtype.is_complex or not bool(((m == 0) | (m == 1)).all()):
        raise LayerFileError(f"{display}, layer {name!r}: mask {key!r} must hold only 0 "
                             "(pruned) and 1 (kept)")
    return (m == 1).contiguous()


# --------------------------------------------------------------------------------------------
# Public API


def list_layers(path_or_bytes: str | os.PathLike | bytes, max_bytes: int = DEFAULT_MAX_BYTES,
                filename: str | None = None) -> list[LayerInfo]:
    """Every layer in a file (name, weight shape ``(M, K)``, where H comes from), in file order.

    Checks shapes (not values); raises :class:`LayerFileError` for a bad file.
    """
    reader, display, stem = _open(path_or_bytes, filename, max_bytes)
    return [_info(reader, display, name, roles, max_bytes)
            for name, roles in _layer_keys(reader, display, stem).items()]


def load_layer(path_or_bytes: str | os.PathLike | bytes, name: str | None = None,
               max_bytes: int = DEFAULT_MAX_BYTES, filename: str | None = None,
               require_hessian: bool = True) -> Layer:
    """One layer from a file: ``name=None`` takes the first (or only) one.

    Returns a :class:`Layer` with ``weight`` ``(M, K)`` and ``hessian`` ``(K, K)`` float32 (built
    as ``XᵀX / N`` in batches when the file has inputs), and ``mask`` when the file is a pruned
    layer (``obsviz.save_pruned``). ``require_hessian=False`` also reads a pruned layer saved
    without a Hessian (``hessian=None``). Raises :class:`LayerFileError`.
    """
    reader, display, stem = _open(path_or_bytes, filename, max_bytes)
    layers = _layer_keys(reader, display, stem, require_hessian)
    return _load_named(reader, display, layers, [next(iter(layers)) if name is None else name],
                       max_bytes)[0]


def load_layers(path_or_bytes: str | os.PathLike | bytes, names: list[str] | None = None,
                max_bytes: int = DEFAULT_MAX_BYTES, filename: str | None = None,
                require_hessian: bool = True) -> list[Layer]:
    """Several layers of one file (``names=None``: every one, in file order) as :func:`load_layer`
    returns each, the file opened and its header parsed once (not once per layer: a file of
    thousands of small layers loads in time linear in its size). Raises
    :class:`LayerFileError`."""
    reader, display, stem = _open(path_or_bytes, filename, max_bytes)
    layers = _layer_keys(reader, display, stem, require_hessian)
    return _load_named(reader, display, layers, list(layers) if names is None else list(names),
                       max_bytes)


def _load_named(reader: _Reader, display: str, layers: dict[str, dict[str, str]],
                names: list[str], max_bytes: int) -> list[Layer]:
    for name in names:
        if name not in layers:
            shown = list(layers)[:12]
            more = f" … ({len(layers)} in all)" if len(layers) > len(shown) else ""
            raise LayerFileError(f"{display}: no layer named {name!r}; its layers are: "
                                 f"{', '.join(shown)}{more}")
    return [_load(reader, display, name, layers[name], max_bytes) for name in names]


def save_layers(path: str | os.PathLike, layers: list[Layer]) -> None:
    """Write layers to ``.safetensors`` as ``<name>.weight`` ``(M, K)``, ``<name>.hessian``
    ``(K, K)`` float32 and ``<name>.nsamples`` ``(1,)`` int64 (the N behind H, when known);
    order, sources and notes go in the file's metadata."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise ValueError(f"path={str(path)!r}: save_layers writes .safetensors files")
    tensors: dict[str, torch.Tensor] = {}
    meta: dict = {"layers": [layer.name for layer in layers], "source": {}, "notes": {}}
    for layer in layers:
        W, H = layer.weight, layer.hessian
        if W.dim() != 2 or H.shape != (W.shape[1], W.shape[1]):
            raise ValueError(
                f"layer {layer.name!r}: weight {tuple(W.shape)} and Hessian {tuple(H.shape)} "
                "must be (M, K) and (K, K)")
        if layer.name in {"", *ROLES} or layer.name + ".weight" in tensors:
            raise ValueError(f"layer name {layer.name!r} is empty, reserved or used twice")
        # clone: safetensors refuses tensors that share memory
        tensors[f"{layer.name}.weight"] = W.detach().to(torch.float32).cpu().contiguous().clone()
        tensors[f"{layer.name}.hessian"] = H.detach().to(torch.float32).cpu().contiguous().clone()
        if layer.nsamples:   # 0: not recorded, and not written as if it were a count
            tensors[f"{layer.name}.nsamples"] = torch.tensor([int(layer.nsamples)],
                                                             dtype=torch.int64)
        if layer.source:
            meta["source"][layer.name] = layer.source
        if layer.notes:
            meta["notes"][layer.name] = list(layer.notes)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={_META_KEY: json.dumps(meta, ensure_ascii=False)})


# --------------------------------------------------------------------------------------------
# Shipped samples


@functools.lru_cache(maxsize=1)
def _sample_index() -> dict[str, Path]:
    index: dict[str, Path] = {}
    for fname in (SAMPLE_FILE, TOY_FILE):  # real layers first, the toy last
        path = SAMPLE_DIR / fname
        if path.is_file():
            for info in list_layers(path, max_bytes=2**40):
                index.setdefault(info.name, path)
    return index


def sample_layer_names() -> list[str]:
    """Every shipped sample layer: the real MiniLM layers first, the toy (``"toy"``) last."""
    return list(_sample_index())


@functools.lru_cache(maxsize=32)
def load_sample_layer(name: str) -> Layer:
    """A shipped sample layer (cached: callers must not modify its tensors in place)."""
    index = _sample_index()
    if name not in index:
        raise ValueError(f"name={name!r} is not a sample layer; valid: {', '.join(index)}")
    reader, display, stem = _open(index[name], None, 2**40)
    layer = _load(reader, display, name, _layer_keys(reader, display, stem)[name], 2**40)
    described = _obsviz_meta(reader).get("source", {}).get(name)
    layer.source = f"sample: {described or index[name].name}"
    return layer


def read_metadata(path_or_bytes: str | os.PathLike | bytes, max_bytes: int = DEFAULT_MAX_BYTES,
                  filename: str | None = None) -> dict[str, str]:
    """The string metadata of a layer file (safetensors header; ``{}`` for other formats)."""
    reader, _, _ = _open(path_or_bytes, filename, max_bytes)
    return reader.metadata()
