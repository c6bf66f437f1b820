"""Stop and start an embedded (pgserver) PostgreSQL, for database-down tests."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tokentrace.store.embedded import psql_path


def _pg_ctl(data_dir: Path, *args: str) -> None:
    pg_ctl = str(Path(psql_path()).with_name("pg_ctl"))
    command = [pg_ctl, "-D", str(data_dir), "-w", *args]
    if os.geteuid() == 0:
        # pgserver runs PostgreSQL as the `pgserver` system user when we are root.
        command = ["runuser", "-u", "pgserver", "--", *command]
    subprocess.run(command, check=True, capture_output=True, timeout=60)


def stop(data_dir: Path) -> None:
    _pg_ctl(data_dir, "-m", "fast", "stop")


def start(data_dir: Path) -> None:
    _pg_ctl(data_dir, "-o", '-h ""', "-o", f"-k {data_dir}", "-l", str(data_dir / "log"), "start")
