"""The demo's status line: log records and other output never share its line."""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Iterator

import pytest

from tests.terminal import screen_lines
from tokentrace.demo import StatusLine


class Terminal(io.StringIO):
    """A text stream that says it is a terminal (what it was sent is kept)."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def root_handler() -> Iterator[logging.StreamHandler[io.StringIO]]:
    """A handler on the root logger writing to a terminal, as basicConfig's writes to stderr."""
    terminal = Terminal()
    handler = logging.StreamHandler(terminal)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield handler
    root.removeHandler(handler)
    root.setLevel(old_level)


def test_a_record_logged_mid_progress_gets_a_line_of_its_own(
    root_handler: logging.StreamHandler[io.StringIO],
) -> None:
    terminal = root_handler.stream
    status = StatusLine(terminal)
    assert status.terminal
    with status.routing_logs():
        status.show("  [###.......]   3/10 model-a")
        # From another thread, as the exporter's worker logs.
        worker = threading.Thread(target=logging.getLogger("tokentrace.x").info, args=("applying migration 1",))
        worker.start()
        worker.join()
        status.show("  [#####.....]   5/10 model-b")
        status.print("a line of output", file=terminal)
        status.finish("  [##########]  10/10 model-b")
        logging.getLogger("tokentrace.x").warning("after the line")
    assert screen_lines(terminal.getvalue()) == [
        "INFO tokentrace.x: applying migration 1",
        "a line of output",
        "  [##########]  10/10 model-b",
        "WARNING tokentrace.x: after the line",
    ]
    # While the record was written, the progress line was drawn again after it.
    raw = terminal.getvalue()
    assert raw.index("applying migration 1") < raw.index("3/10 model-a", raw.index("applying migration 1"))


def test_the_handlers_are_put_back(root_handler: logging.StreamHandler[io.StringIO]) -> None:
    before = list(logging.getLogger().handlers)
    with StatusLine(root_handler.stream).routing_logs():
        assert root_handler not in logging.getLogger().handlers
    assert sorted(map(id, logging.getLogger().handlers)) == sorted(map(id, before))


def test_off_a_terminal_only_finished_lines_are_written() -> None:
    stream = io.StringIO()
    status = StatusLine(stream)
    assert not status.terminal
    status.show("  [#.........]   1/10 m")
    with status.interrupt():
        stream.write("a log record\n")
    status.show("  exporting ...")
    status.clear()
    status.finish("  [##########]  10/10 m")
    assert stream.getvalue() == "a log record\n  [##########]  10/10 m\n"
