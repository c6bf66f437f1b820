"""What both decoders produce: :class:`Decoded`, :class:`Rejection`, :class:`DecodeError`,
and the names a span's kind and status are stored under. Pure, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field

from tokentrace.store.rows import SpanData

# Indexed by the OTLP enum value; SPAN_KIND_UNSPECIFIED (0) reads as INTERNAL.
KIND_NAMES: tuple[str, ...] = ("INTERNAL", "INTERNAL", "SERVER", "CLIENT", "PRODUCER", "CONSUMER")
STATUS_NAMES: tuple[str, ...] = ("UNSET", "OK", "ERROR")
# A refused span's ids are shown (in its Rejection) up to this many hex characters.
SHOWN_ID_CHARS = 40


class DecodeError(ValueError):
    """The body is not an OTLP trace export request (the message says why)."""


@dataclass(frozen=True, slots=True)
class Rejection:
    """A span refused, with the ids it was sent with (hex, or as received)."""

    trace_id: str
    span_id: str
    reason: str

    def describe(self) -> str:
        return f"span {self.trace_id or '?'}/{self.span_id or '?'}: {self.reason}"


@dataclass(slots=True)
class Decoded:
    """The spans of one request that could be read, and those that could not."""

    spans: list[SpanData] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.spans) + len(self.rejected)


def kind_name(value: int) -> str:
    """The exporter's name for an OTLP span kind (unknown values read as INTERNAL)."""
    return KIND_NAMES[value] if 0 <= value < len(KIND_NAMES) else "INTERNAL"


def status_name(value: int) -> str:
    """The exporter's name for an OTLP status code (unknown values read as UNSET)."""
    return STATUS_NAMES[value] if 0 <= value < len(STATUS_NAMES) else "UNSET"
