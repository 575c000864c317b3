"""Run ``python -m engine ...`` with a pseudo-terminal as its output, for what the CLI draws on a terminal."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# The child's stdout and stderr are the pty; the parent copies what it reads to its own stdout.
_SCRIPT = """import sys, pty, os
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.executable, [sys.executable, '-m', 'engine', *sys.argv[1:]])
out = b''
while True:
    try: chunk = os.read(fd, 4096)
    except OSError: break
    if not chunk: break
    out += chunk
sys.stdout.write(out.decode())
"""


def run_in_terminal(arguments: list[str], cwd: Path | None = None, timeout: float = 60) -> str:
    """What ``orchestrion ARGUMENTS`` printed to a terminal (escape sequences included)."""
    result = subprocess.run([sys.executable, "-c", _SCRIPT, *arguments], capture_output=True, text=True,
                            timeout=timeout, check=True, cwd=cwd)
    return result.stdout
