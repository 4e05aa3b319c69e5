"""The app's forms, declared: what each page's inputs are (``GeometryForm``, ``PruneForm``), and
the geometry form read into a ``Geometry`` plus an error per field.

Pure (no Streamlit), so tests and other pages can use it. Shape fields accept comma-separated
integers and small expressions in ``M`` and ``K`` (the weight shape): ``M, K/16, 8, 2``. Numbers a
user types (nnz, damping) are kept as the text typed and read here, so what the page shows is
what is used, or the field says why it is not (``parse_int``/``parse_float``).
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from obsviz import PRESETS, ArgumentError, Geometry

PATTERNS = (*PRESETS, "N:M", "free-form")

#: Window sizes (rows, cols) the layout is drawn through, cell by cell, on big layers.
WINDOWS = {"16 × 32": (16, 32), "32 × 64": (32, 64), "64 × 128": (64, 128)}

#: The engine's argument names -> the form field that holds them.
_ARG_FIELD = {
    "weight_shape": "weight", "view_shape": "view", "view_stride": "stride", "view": "view",
    "block": "block", "scope": "scope", "nnz": "nnz", "preset": "pattern", "n": "pattern",
    "m": "pattern",
}

_INTEGER = re.compile(r"[+-]?[0-9]+")
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}

#: Longest text a shape or number field takes (the URL can carry anything).
MAX_FIELD_CHARS = 200
#: Most weights a typed shape may have: above 4096 × 11008 (45 M), below what the per-weight maps
#: of the layout would need on a big machine. A loaded layer's own shape is never capped here;
#: the maps' memory is also checked against what is free before they are computed.
MAX_WEIGHTS = 2**28


@dataclass
class GeometryForm:
    """The Geometry page's inputs, as typed (session key ``geometry_form``)."""

    pattern: str = "2:4"
    n: int = 2                  # N:M
    m: int = 4
    use_layer: bool = True      # the current layer's shape, else ``weight``
    weight: str = "384, 384"
    nnz: str = "2"              # as typed; read by ``parse_int``
    view: str = ""
    stride: str = ""
    block: str = ""
    scope: str = ""
    r0: int = 0                 # the drawn window's first row and column
    c0: int = 0
    win: str = "32 × 64"

    def spec(self) -> dict:
        """The fields that decide the geometry (not where the window is)."""
        return {k: v for k, v in asdict(self).items() if k not in ("r0", "c0", "win")}


@dataclass
class PruneForm:
    """The Prune page's inputs (session key ``prune_form``); method options live in
    ``options`` by option name (an option two methods share has one value)."""

    geo_source: str = "page"    # "page": the Geometry page's; "preset": ``preset`` here
    preset: str = "2:4"
    nnz: str = "2"              # as typed
    damp: str = "0.01"          # as typed
    methods: list[str] = field(default_factory=list)
    options: dict = field(default_factory=dict)
    sample: str = "all"         # "all" | "first" | "every"
    first: int = 64
    every: int = 8


def preset_budget(form: object, *, text: bool = False) -> Callable[[str], None]:
    """The after-change hook (``ui.state.form_widgets``) of a form with ``preset`` and ``nnz``
    fields, a dict or a form object: a new preset starts from its own nnz (as text, with
    ``text``, for a form that keeps nnz as typed). A name that is not a preset leaves nnz."""
    def after(name: str) -> None:
        if name != "preset":
            return
        preset = form["preset"] if isinstance(form, dict) else form.preset
        try:
            nnz = Geometry.preset(preset, (16, 16)).nnz
        except ValueError:
            return
        value = str(nnz) if text else nnz
        if isinstance(form, dict):
            form["nnz"] = value
        else:
            form.nnz = value
    return after


def parse_int(name: str, text: object, minimum: int | None = None) -> int:
    """An integer typed by a user: ``" 12 "`` -> 12. Never guesses: ``abc``, ``1.5`` or an empty
    field is refused, naming ``name``.

    Raises:
        ArgumentError: ``name``, with what was typed and what is expected.
    """
    raw = str(text).strip()
    if len(raw) > MAX_FIELD_CHARS or not _INTEGER.fullmatch(raw):
        raise ArgumentError(name, f"{name}={_short(str(text))} is not a whole number; type "
                                  "digits, e.g. 2")
    value = int(raw)
    if minimum is not None and value < minimum:
        raise ArgumentError(name, f"{name}={value} must be at least {minimum}")
    return value


def parse_float(name: str, text: object, minimum: float | None = None) -> float:
    """A number typed by a user: ``"0.01"``, ``"1e-3"``. ``abc``, ``nan``, ``inf`` or an empty
    field is refused, naming ``name``.

    Raises:
        ArgumentError: ``name``, with what was typed and what is expected.
    """
    raw = str(text).strip()
    try:
        if len(raw) > MAX_FIELD_CHARS:
            raise ValueError
        value = float(raw)
    except ValueError:
        raise ArgumentError(name, f"{name}={_short(str(text))} is not a number; type e.g. "
                                  "0.01") from None
    if not math.isfinite(value):
        raise ArgumentError(name, f"{name}={raw} must be a finite number")
    if minimum is not None and value < minimum:
        raise ArgumentError(name, f"{name}={value:g} must be at least {minimum:g}")
    return value


def default_form(weight_shape: tuple[int, int] = (384, 384)) -> GeometryForm:
    """A fresh form: ``2:4`` on ``weight_shape``, its free-form fields filled from the preset."""
    form = GeometryForm(weight=f"{weight_shape[0]}, {weight_shape[1]}")
    fill_from_preset(form, weight_shape)
    return form


def fill_from_preset(form: GeometryForm, weight_shape: tuple[int, int]) -> None:
    """Copy the chosen preset's view, block, scope and nnz into the free-form fields, so going
    free-form starts from it. Leaves the form unchanged when the preset does not fit the shape."""
    if form.pattern == "free-form":
        return
    name = f"{form.n}:{form.m}" if form.pattern == "N:M" else form.pattern
    try:
        geom = Geometry.preset(name, weight_shape)
    except ValueError:
        return
    d = geom.to_dict()
    form.view, form.stride = _join(d["view_shape"]), _join(d["view_stride"])
    form.block, form.scope, form.nnz = _join(d["block"]), _join(d["scope"]), str(geom.nnz)


def _join(values: list[int]) -> str:
    return ", ".join(str(v) for v in values)


def parse_shape(name: str, text: str, M: int | None = None, K: int | None = None
                ) -> tuple[int, ...]:
    """``"M, K/16, 8, 2"`` -> ``(M, K // 16, 8, 2)``. Brackets are optional; ``-1`` is allowed.

    Raises:
        ArgumentError: naming ``name`` (its ``.argument``), the text and what went wrong.
    """
    if len(text) > MAX_FIELD_CHARS:
        raise ArgumentError(name, f"{name}={_short(text)} is {len(text):,} characters long; a "
                                  f"shape is at most {MAX_FIELD_CHARS}, like 1, 4 or M, K/16, 8, 2")
    body = text.strip().strip("()[]").strip()
    if not body:
        raise ArgumentError(name, f"{name}={text!r} is empty; give comma-separated integers like "
                                  "1, 4")
    names = {k: v for k, v in (("M", M), ("K", K)) if v is not None}
    try:
        tree = ast.parse(f"({body},)", mode="eval").body
        return tuple(_eval(name, text, node, names) for node in tree.elts)
    except SyntaxError:
        raise ArgumentError(
            name, f"{name}={_short(text)} is not a list of integers; write e.g. 1, 4 or M, K/16, "
                  "8, 2") from None
    except (RecursionError, MemoryError, OverflowError):
        raise ArgumentError(
            name, f"{name}={_short(text)} is too deeply nested or too large to evaluate; write "
                  "plain integers like 1, 4 or M, K/16, 8, 2") from None


def _short(text: str, n: int = 24) -> str:
    """``text`` quoted, cut to its first ``n`` characters (a message must stay readable)."""
    return repr(text) if len(text) <= n else f"{text[:n]!r}…"


def parse_weight_shape(text: str) -> tuple[int, int]:
    """``"M, K"`` -> ``(M, K)``, refusing shapes of more than ``MAX_WEIGHTS`` weights.

    Raises:
        ArgumentError: ``"weight_shape"``, saying what is wrong and the limit.
    """
    M, K = _two(parse_shape("weight_shape", text))
    if M * K > MAX_WEIGHTS:
        raise ArgumentError(
            "weight_shape", f"weight_shape={(M, K)} has {M * K:,} weights; a typed shape may have "
                            f"at most {MAX_WEIGHTS:,} (2**28, e.g. 16384 × 16384)")
    return M, K


def _eval(name: str, text: str, node: ast.AST, names: dict[str, int]) -> int:
    def bad(why: str) -> ArgumentError:
        return ArgumentError(name, f"{name}={_short(text)}: {why}")

    if isinstance(node, ast.Constant) and isinstance(node.value, int) \
            and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.Name):
        if node.id in names:
            return names[node.id]
        return _raise(bad(f"unknown name {node.id!r}; only M and K (the weight shape) are known"))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_eval(name, text, node.operand, names)
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Div, ast.FloorDiv)):
        a, b = _eval(name, text, node.left, names), _eval(name, text, node.right, names)
        if b == 0 or a % b:
            return _raise(bad(f"{ast.unparse(node)} = {a}/{b} is not a whole number"))
        return a // b
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_eval(name, text, node.left, names),
                                   _eval(name, text, node.right, names))
    return _raise(bad(f"{ast.unparse(node)!r} is not an integer; use integers, M, K, + - * /"))


def _raise(err: ArgumentError) -> int:
    raise err


def field_of(err: ValueError) -> str:
    """The form field an error is about: its ``ArgumentError.argument``; anything else is shown
    at ``pattern``."""
    return _ARG_FIELD.get(getattr(err, "argument", None), "pattern")


def build_geometry(form: GeometryForm, layer_shape: tuple[int, int] | None
                   ) -> tuple[Geometry | None, int | None, dict[str, str]]:
    """The form -> ``(geometry, nnz, errors)``; ``errors`` maps a field to the engine's message.

    ``nnz`` is the chosen budget (for a preset, the user's, not the preset's default, which
    ``geometry.nnz`` keeps). Fields the current pattern hides (view, block, … of a preset)
    report at ``pattern``.
    """
    try:
        if form.use_layer and layer_shape is not None:
            M, K = layer_shape
        else:
            M, K = parse_weight_shape(form.weight)
        geom, nnz = _geometry(form, M, K)
        geom.check_nnz(nnz)
    except ValueError as err:
        where = field_of(err)
        if form.pattern != "free-form" and where in ("view", "stride", "block", "scope"):
            where = "pattern"
        return None, None, {where: str(err)}
    return geom, nnz, {}


def _two(shape: tuple[int, ...]) -> tuple[int, int]:
    if len(shape) != 2:
        raise ArgumentError("weight_shape", f"weight_shape={shape} must be 2-D (M, K)")
    return shape[0], shape[1]


def _geometry(form: GeometryForm, M: int, K: int) -> tuple[Geometry, int]:
    if form.pattern == "N:M":
        n, m = int(form.n), int(form.m)
        return Geometry.nm(n, m, (M, K)), n
    nnz = parse_int("nnz", form.nnz)
    if form.pattern != "free-form":
        return Geometry.preset(form.pattern, (M, K)), nnz
    view = parse_shape("view_shape", form.view, M, K) if form.view.strip() else None
    stride = parse_shape("view_stride", form.stride, M, K) if form.stride.strip() else None
    if stride is not None and view is None:
        raise ArgumentError("view_stride", f"view_stride={stride} given without a view shape; "
                                           "give both or neither")
    block = parse_shape("block", form.block, M, K)
    scope = parse_shape("scope", form.scope, M, K)
    return Geometry((M, K), block, scope, view, stride, name=None), nnz
