"""Cut sample_data/'s held-out evaluation text from the Debian package ``dict-devil``: Ambrose
Bierce's *The Devil's Dictionary* (1911, public domain), the preface and the entries A to E.

    apt-get download dict-devil && dpkg-deb -x dict-devil_*.deb devil
    python scripts/build_heldout_text.py devil/usr/share/dictd/devil.dict.dz

The package stores the book as a dictd database (a gzip file); the text itself is unchanged plain
ASCII. The cut keeps the lines from "PREFACE" up to the first entry of F, trailing blanks removed.
"""

from __future__ import annotations

import argparse
import gzip
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "sample_data" / "devils_dictionary_1911_a-e.txt"


def cut_excerpt(book: str) -> str:
    """The preface and the entries A-E of the dictd text of The Devil's Dictionary."""
    lines = book.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.strip() == "PREFACE")
    end = next(i for i, ln in enumerate(lines)
               if i > start and re.match(r"^F[A-Z' -]*, [a-z]", ln))
    text = "\n".join(ln.rstrip() for ln in lines[start:end])
    return text.strip() + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", type=Path, help="devil.dict.dz (or the plain text) of dict-devil")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    raw = args.source.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    args.out.write_text(cut_excerpt(raw.decode("ascii")), encoding="utf-8")
    print(f"wrote {args.out.name} ({args.out.stat().st_size / 1e3:.1f} KB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
