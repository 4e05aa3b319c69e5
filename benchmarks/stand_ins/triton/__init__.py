"""A stand-in for ``triton`` so the seed library imports on a CPU-only machine.

Only what its import needs: ``jit`` (returns the function unchanged), ``cdiv`` and
``next_power_of_2``. Kernels decorated with it are never launched by the benchmarks (they
compare the pruners, which are plain torch). Used only when the real ``triton`` is missing.
"""

from . import language  # noqa: F401


def jit(fn=None, **_options):
    if fn is None:
        return lambda f: f
    return fn


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()
