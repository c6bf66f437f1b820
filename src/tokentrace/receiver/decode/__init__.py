"""OTLP trace export requests (protobuf or JSON) → :class:`SpanData`. Pure, no I/O.

Both OTLP encodings carry the same ``ExportTraceServiceRequest``. This package turns
either into the :class:`~tokentrace.store.rows.SpanData` the store builds rows from,
so a span that comes over OTLP is normalized and derived exactly like one exported
in process:

* :func:`decode_protobuf` (:mod:`.protobuf`) — binary protobuf
  (``application/x-protobuf``, and the gRPC ``Export`` call), parsed with the
  ``opentelemetry-proto`` message classes; a request they refuse whole is read span
  by span from its framing;
* :func:`decode_json` (:mod:`.json`) — OTLP/JSON (``application/json``), which is
  *not* plain proto3 JSON (hex ids, int64 as strings), walked by hand;
* :mod:`.results` — what both return (:class:`Decoded`, :class:`Rejection`) or
  raise (:class:`DecodeError`), and the kind and status names.

Two kinds of failure are kept apart. A body that is not an export request at all
(not protobuf, not JSON, wrong structure above the span level) raises
:class:`DecodeError`: the whole request is refused. A span that is malformed on
its own (an id that is not hex, a timestamp that is not a number, an attribute
value of the wrong type; in protobuf, a string that is not UTF-8) becomes a
:class:`Rejection` with a reason and the other spans of the request go on. Ids of
the wrong *length* are left for :func:`~tokentrace.store.rows.build_row` to refuse,
so both encodings give the same reason for them.

Span kinds and status codes become the names the in-process exporter uses
(``CLIENT``, ``ERROR``, …); ``SPAN_KIND_UNSPECIFIED`` is read as ``INTERNAL``, as
the OTLP specification allows. Events, links and the instrumentation scope are not
stored (the in-process exporter does not store them either).
"""

from __future__ import annotations

from tokentrace.receiver.decode.json import (
    MAX_VALUE_DEPTH,
    decode_json,
    json_attributes,
    json_span,
    json_value,
)
from tokentrace.receiver.decode.protobuf import decode_protobuf, pb_attributes, pb_value
from tokentrace.receiver.decode.results import (
    KIND_NAMES,
    STATUS_NAMES,
    Decoded,
    DecodeError,
    Rejection,
    kind_name,
    status_name,
)

__all__ = [
    "KIND_NAMES",
    "MAX_VALUE_DEPTH",
    "STATUS_NAMES",
    "DecodeError",
    "Decoded",
    "Rejection",
    "decode_json",
    "decode_protobuf",
    "json_attributes",
    "json_span",
    "json_value",
    "kind_name",
    "pb_attributes",
    "pb_value",
    "status_name",
]
