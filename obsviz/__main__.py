"""``python -m obsviz …``: the command line (see obsviz.cli)."""

from obsviz.cli import main

raise SystemExit(main())
