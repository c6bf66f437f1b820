"""Group commit: the rows of concurrent export requests share one COPY and one commit.

Committed one request at a time, 512-span requests cost PostgreSQL more than twice
the CPU per span that large batches do (~37 µs against ~16): every COPY statement runs the rollup
trigger once, and every transaction pays its commit (see ``bench/RESULTS.md``,
"OTLP receiver"). So each request thread hands its rows to :meth:`GroupCommitter.write`
and waits; a writer thread takes everything pending (up to ``max_rows``) and
stores it with one :meth:`~tokentrace.store.writer.SpanWriter.write`, then gives
each request its own share of the result: the rows PostgreSQL refused, indexed
into that request's rows, or the exception the write raised (every request of a
failed group sees it, so none of them is acknowledged). ``write`` returns only
after the commit, so the receiver still answers success only for committed spans,
and the writer's idempotency (a span already stored is skipped) holds for the
group as it did for each request.

One write runs at a time, so requests arriving meanwhile gather into the next
group: the busier the receiver, the larger the groups. A further write starts only
when a full group is already waiting (PostgreSQL has fallen behind); there are at
most ``threads`` writes at once, each on one of the writer's connections.
"""

from __future__ import annotations

import bisect
import itertools
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from tokentrace.store.rows import WireRow
from tokentrace.store.writer import WriteResult

# 16 requests of 512 spans: PostgreSQL's per-span cost has flattened out well before
# (bench/RESULTS.md), and one group's rows stay a few MB of memory.
DEFAULT_MAX_GROUP_ROWS = 8192

# Writes started as soon as rows are pending; more start only when a full group
# waits (PostgreSQL has fallen behind). One gathers the most rows per COPY, and
# PostgreSQL's CPU per span falls with them: on 2 cores, two receivers with 8
# clients committed ~30,000 spans/s with one eager write and ~26,000 with two
# (bench/RESULTS.md, "OTLP receiver").
EAGER_WRITES = 1

WriteGroup = Callable[[list[WireRow]], WriteResult]


class CommitterClosed(Exception):
    """The committer was closed (the receiver is stopping); nothing was written."""


@dataclass(slots=True)
class Share:
    """One request's part of a group write."""

    rejected: list[tuple[int, str]] = field(default_factory=list)  # (index in its rows, reason)
    error: Exception | None = None  # what the group's write raised: nothing was committed


@dataclass(eq=False, slots=True)
class _Pending:
    rows: Sequence[WireRow]
    share: Share = field(default_factory=Share)
    done: threading.Event = field(default_factory=threading.Event)


class GroupCommitter:
    """Writer threads that store the rows of waiting requests in groups (thread-safe)."""

    def __init__(
        self, write: WriteGroup, *, threads: int, max_rows: int = DEFAULT_MAX_GROUP_ROWS
    ) -> None:
        self._write = write
        self._max_rows = max_rows
        self._cond = threading.Condition()
        self._queue: deque[_Pending] = deque()
        self._queued_rows = 0
        self._writing = 0
        self._closed = False
        self.groups_written = 0  # how many writes the requests so far took
        self._threads = [
            threading.Thread(target=self._run, name=f"tokentrace-commit-{i}", daemon=True)
            for i in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def write(self, rows: Sequence[WireRow]) -> Share:
        """Commit ``rows`` with whatever else is pending; returns after the commit."""
        pending = _Pending(rows)
        with self._cond:
            if self._closed:
                raise CommitterClosed("the receiver is stopping")
            self._queue.append(pending)
            self._queued_rows += len(rows)
            self._cond.notify()
        pending.done.wait()
        return pending.share

    @property
    def pending_requests(self) -> int:
        """Requests waiting for a writer (not those being written)."""
        with self._cond:
            return len(self._queue)

    def close(self, timeout: float | None = None) -> None:
        """Refuse new rows; the writers store what is queued, then end."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout)

    # --- writer threads ------------------------------------------------------------
    def _run(self) -> None:
        while (group := self._next_group()) is not None:
            try:
                self._commit(group)
            finally:
                with self._cond:
                    self._writing -= 1
                    self._cond.notify_all()  # another writer may start the next group now

    def _may_start(self) -> bool:
        if not self._queue:
            return False
        return self._writing < EAGER_WRITES or self._queued_rows >= self._max_rows

    def _next_group(self) -> list[_Pending] | None:
        with self._cond:
            while not self._may_start():
                if self._closed and not self._queue:
                    return None
                self._cond.wait()
            group: list[_Pending] = []
            rows = 0
            # At least one request, however large; then more while they fit.
            while self._queue and (not group or rows + len(self._queue[0].rows) <= self._max_rows):
                pending = self._queue.popleft()
                group.append(pending)
                rows += len(pending.rows)
            self._queued_rows -= rows
            self._writing += 1
            self.groups_written += 1
            return group

    def _commit(self, group: list[_Pending]) -> None:
        rows = [row for pending in group for row in pending.rows]
        try:
            result = self._write(rows)
        except Exception as exc:  # handed to every request of the group, which re-raise it
            for pending in group:
                pending.share.error = exc
        else:
            _distribute(result.rejected, group)
        finally:
            for pending in group:
                pending.done.set()


def _distribute(rejected: list[tuple[int, str]], group: list[_Pending]) -> None:
    """Map the group's rejected row indexes back to each request's own."""
    if not rejected:
        return
    starts = list(itertools.accumulate((len(p.rows) for p in group[:-1]), initial=0))
    for index, reason in rejected:
        which = bisect.bisect_right(starts, index) - 1
        group[which].share.rejected.append((index - starts[which], reason))
