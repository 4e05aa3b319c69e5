"""The geometry form: what the user typed -> a ``Geometry`` plus an error per field.

Pure (no Streamlit), so tests and other pages can use it. Shape fields accept comma-separated
integers and small expressions in ``M`` and ``K`` (the weight shape): ``M, K/16, 8, 2``.
"""

from __future__ import annotations

import ast
import operator

from obsviz import PRESETS, ArgumentError, Geometry

PATTERNS = (*PRESETS, "N:M", "free-form")

#: Window sizes (rows, cols) the layout is drawn through, cell by cell, on big layers.
WINDOWS = {"16 × 32": (16, 32), "32 × 64": (32, 64), "64 × 128": (64, 128)}

#: Form fields, in the order the page shows them. Errors are reported against these names.
FIELDS = ("pattern", "weight", "view", "stride", "block", "scope", "nnz")

#: The engine's argument names -> the form field that holds them.
_ARG_FIELD = {
    "weight_shape": "weight", "view_shape": "view", "view_stride": "stride", "view": "view",
    "block": "block", "scope": "scope", "nnz": "nnz", "preset": "pattern", "n": "pattern",
    "m": "pattern",
}

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}

#: Longest text a shape field takes (a real shape is a few numbers; the URL can carry anything).
MAX_FIELD_CHARS = 200
#: Most weights a typed shape may have: above 4096 × 11008 (45 M), below what the per-weight maps
#: of the layout would need on a big machine. A loaded layer's own shape is never capped here.
MAX_WEIGHTS = 2**28


def default_form(weight_shape: tuple[int, int] = (384, 384)) -> dict:
    """A fresh form: ``2:4`` on ``weight_shape``, its free-form fields filled from the preset."""
    form = {"pattern": "2:4", "n": 2, "m": 4, "use_layer": True,
            "weight": f"{weight_shape[0]}, {weight_shape[1]}", "nnz": 2,
            "view": "", "stride": "", "block": "", "scope": "", "r0": 0, "c0": 0,
            "win": "32 × 64"}
    return fill_from_preset(form, weight_shape)


def fill_from_preset(form: dict, weight_shape: tuple[int, int]) -> dict:
    """Copy the chosen preset's view, block, scope and nnz into the free-form fields, so going
    free-form starts from it. Leaves the form unchanged when the preset does not fit the shape."""
    pattern = form["pattern"]
    name = f"{form['n']}:{form['m']}" if pattern == "N:M" else pattern
    if pattern == "free-form":
        return form
    try:
        geom = Geometry.preset(name, weight_shape)
    except ValueError:
        return form
    d = geom.to_dict()
    return {**form, "view": _join(d["view_shape"]), "stride": _join(d["view_stride"]),
            "block": _join(d["block"]), "scope": _join(d["scope"]), "nnz": geom.nnz}


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
        raise ArgumentError(name,
                            f"{name}={text!r} is empty; give comma-separated integers like 1, 4")
    names = {k: v for k, v in (("M", M), ("K", K)) if v is not None}
    try:
        tree = ast.parse(f"({body},)", mode="eval").body
        return tuple(_eval(name, text, node, names) for node in tree.elts)
    except SyntaxError:
        raise ArgumentError(
            name, f"{name}={text!r} is not a list of integers; write e.g. 1, 4 or M, K/16, 8, 2"
        ) from None
    except (RecursionError, MemoryError, OverflowError):
        raise ArgumentError(
            name,
            f"{name}={_short(text)} is too deeply nested or too large to evaluate; write plain "
            "integers like 1, 4 or M, K/16, 8, 2") from None


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
            "weight_shape",
            f"weight_shape={(M, K)} has {M * K:,} weights; a typed shape may have at most "
            f"{MAX_WEIGHTS:,} (2**28, e.g. 16384 × 16384)")
    return M, K


def _eval(name: str, text: str, node: ast.AST, names: dict[str, int]) -> int:
    def bad(why: str) -> ValueError:
        return ArgumentError(name, f"{name}={text!r}: {why}")

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


def _raise(err: ValueError) -> int:
    raise err


def field_of(err: ValueError) -> str:
    """The form field an error is about: its ``ArgumentError.argument``; anything else is shown
    at ``pattern``."""
    return _ARG_FIELD.get(getattr(err, "argument", None), "pattern")


def build_geometry(form: dict, layer_shape: tuple[int, int] | None
                   ) -> tuple[Geometry | None, int | None, dict[str, str]]:
    """The form -> ``(geometry, nnz, errors)``; ``errors`` maps a field to the engine's message.

    ``geometry.nnz`` is the chosen budget (for a preset, the user's, not the preset's default).

    Fields the current pattern hides (view, block, … of a preset) report at ``pattern``.
    """
    errors: dict[str, str] = {}
    try:
        if form.get("use_layer") and layer_shape is not None:
            M, K = layer_shape
        else:
            M, K = parse_weight_shape(form["weight"])
        geom, nnz = _geometry(form, M, K)
        geom.check_nnz(nnz)
        geom.nnz = nnz  # a fresh object: it carries the chosen budget from here on
    except ValueError as err:
        message = str(err)
        field = field_of(err)
        if form["pattern"] != "free-form" and field in ("view", "stride", "block", "scope"):
            field = "pattern"
        errors[field] = message
        return None, None, errors
    return geom, nnz, errors


def _two(shape: tuple[int, ...]) -> tuple[int, int]:
    if len(shape) != 2:
        raise ArgumentError("weight_shape", f"weight_shape={shape} must be 2-D (M, K)")
    return shape[0], shape[1]


def _geometry(form: dict, M: int, K: int) -> tuple[Geometry, int]:
    pattern = form["pattern"]
    if pattern == "N:M":
        n, m = int(form["n"]), int(form["m"])
        return Geometry.nm(n, m, (M, K)), n
    nnz = _int("nnz", form["nnz"])
    if pattern != "free-form":
        return Geometry.preset(pattern, (M, K)), nnz
    view = parse_shape("view_shape", form["view"], M, K) if form["view"].strip() else None
    stride = (parse_shape("view_stride", form["stride"], M, K)
              if form["stride"].strip() else None)
    if stride is not None and view is None:
        raise ArgumentError(
            "view_stride", f"view_stride={stride} given without a view shape; give both or neither")
    block = parse_shape("block", form["block"], M, K)
    scope = parse_shape("scope", form["scope"], M, K)
    return Geometry((M, K), block, scope, view, stride, name=None), nnz


def _int(name: str, value: object) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ArgumentError(name, f"{name}={value!r} must be an integer") from None
