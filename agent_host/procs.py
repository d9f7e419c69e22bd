"""Whether a process is alive: on a host (an agent that owns a setup) and on the laptop (a
`ports` forwarder). Python 3.9 compatible."""

from __future__ import annotations

import os
from typing import Optional


def pid_alive(pid: Optional[int]) -> bool:
    """True when a process with this pid exists (ours or another user's)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
