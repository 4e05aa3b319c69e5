"""Who owns a run while it goes: a token naming this process (host, pid and the process's start
time, so a reused pid is not taken for the owner), and whether the process a token names is
still alive. A ``running`` whole-model run and a session's temporary folder carry the token of
the process that made them; at start-up, those of dead processes are marked stopped or removed.
"""

from __future__ import annotations

import os
import re
import socket

__all__ = ["process_token", "token_alive"]

_TOKEN_RE = re.compile(r"^(?P<host>[^:]*):(?P<pid>\d{1,10}):(?P<start>\d{1,20})$")


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux ``/proc``), ``0`` where the
    system does not say, ``None`` when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("ascii", "replace")
        return int(stat.rsplit(")", 1)[1].split()[19])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, IndexError):
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except (PermissionError, OSError):
        pass
    return 0


def _host() -> str:
    return socket.gethostname().replace(":", "_")[:200]


def process_token() -> str:
    """``"host:pid:start"`` of this process."""
    pid = os.getpid()
    return f"{_host()}:{pid}:{_start_time(pid) or 0}"


def token_alive(token: object) -> bool | None:
    """``True`` when the process ``token`` names is running, ``False`` when it is gone (on this
    host: no such pid, or a pid reused by a later process), ``None`` when that cannot be known
    (another host). Anything that is not a token is gone."""
    m = _TOKEN_RE.match(token) if isinstance(token, str) else None
    if m is None:
        return False
    if m["host"] != _host():
        return None
    start = _start_time(int(m["pid"]))
    return start is not None and (start == int(m["start"]) or 0 in (start, int(m["start"])))
