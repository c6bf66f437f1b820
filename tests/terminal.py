"""A terminal, for tests of what people see: a pseudo-terminal to run a command on,
and the lines a terminal would show for what it wrote."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys

# A record in the CLI's log format (cli._setup_logging).
LOG_RECORD = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")


def in_a_terminal(env: dict[str, str], *args: str, timeout: float = 180) -> tuple[int, str]:
    """``tokentrace ARGS`` with stdout and stderr on one pseudo-terminal, as in a user's
    shell; returns its exit code and every byte it wrote there (decoded)."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "tokentrace", *args], env=env,
                            stdin=subprocess.DEVNULL, stdout=follower, stderr=follower)
    os.close(follower)
    chunks = []
    try:
        while select.select([leader], [], [], timeout)[0]:
            try:
                data = os.read(leader, 65536)
            except OSError:  # EIO: the child closed its end
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(leader)
        returncode = proc.wait(timeout=timeout)
    return returncode, b"".join(chunks).decode()


def screen_lines(raw: str) -> list[str]:
    """The lines a terminal shows for ``raw``: a carriage return goes back to the
    line's start, ``ESC [ K`` erases from there to its end, other characters overwrite."""
    lines: list[str] = []
    line: list[str] = []
    col = 0
    i = 0
    while i < len(raw):
        if raw.startswith("\x1b[K", i):
            del line[col:]
            i += 3
            continue
        ch = raw[i]
        if ch == "\r":
            col = 0
        elif ch == "\n":
            lines.append("".join(line))
            line, col = [], 0
        else:
            line[col:col + 1] = [ch]
            col += 1
        i += 1
    return lines + (["".join(line)] if line else [])
