"""Take the README's dashboard screenshot from the demo fleet (docs/img/dashboard.png).

    python -m tests.integration.dashboard.readme_screenshot [OUT.png] [--dark]

Starts a throwaway embedded PostgreSQL, runs ``tokentrace demo`` into it, serves
the page from a real receiver on a free loopback port, and captures the whole
page with headless Chromium at 1400 px wide. Needs Chromium and the ``websockets``
package (the test extra).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
from pathlib import Path

from tokentrace.demo import run_demo
from tokentrace.receiver.server import Receiver
from tokentrace.receiver.settings import Endpoint, ServeSettings
from tokentrace.store.embedded import embedded_dsn, stop_embedded
from tokentrace.store.migrate import migrate
from tests.integration.dashboard.cdp import Browser, chromium_path

ROOT = Path(__file__).resolve().parents[3]
WIDTH = 1400


def capture(out: Path, *, dark: bool = False, zone: str = "Europe/Berlin") -> None:
    binary = chromium_path()
    if binary is None:
        raise SystemExit("chromium is not installed (apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="tokentrace-shot-") as tmp:
        dsn = embedded_dsn(Path(tmp) / "pg")
        try:
            migrate(dsn)
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                run_demo(dsn)
            settings = ServeSettings(grpc_endpoint=Endpoint("127.0.0.1", 0),
                                     http_endpoint=Endpoint("127.0.0.1", 0), grace_seconds=2)  # fmt: skip
            receiver = Receiver(settings, dsn)
            with receiver:
                browser = Browser(binary, Path(tmp) / "profile")
                try:
                    page = browser.new_page(WIDTH, 900, timezone=zone)
                    if dark:
                        page.call("Emulation.setEmulatedMedia",
                                  {"features": [{"name": "prefers-color-scheme", "value": "dark"}]})  # fmt: skip
                    page.goto(f"http://127.0.0.1:{receiver.http_port}/")
                    page.wait_for("document.getElementById('data').dataset.tz !== 'UTC'")
                    page.screenshot(out, WIDTH)
                finally:
                    browser.close()
        finally:
            stop_embedded()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=Path, default=ROOT / "docs" / "img" / "dashboard.png")
    parser.add_argument("--dark", action="store_true", help="the dark theme")
    args = parser.parse_args(argv)
    capture(args.out, dark=args.dark)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
