"""The protobuf wire format's framing, read without a schema. Pure, no I/O.

Only used when the message classes refuse a request whole (see
:func:`tokentrace.receiver.decode.decode_protobuf`): walking the framing finds each
``ResourceSpans`` and ``Span`` of the request as bytes, so each can be parsed, and
refused, on its own.
"""

from __future__ import annotations

from collections.abc import Iterator

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
_MAX_VARINT_BYTES = 10


class WireError(ValueError):
    """The bytes are not a sequence of protobuf fields."""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """The varint at ``pos`` and the position after it."""
    value = shift = 0
    for i in range(pos, min(pos + _MAX_VARINT_BYTES, len(data))):
        byte = data[i]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i + 1
        shift += 7
    raise WireError(f"varint at byte {pos} is cut off or too long")


def fields(data: bytes) -> Iterator[tuple[int, int, int, int]]:
    """``(number, wire type, start, end)`` of each field in ``data``.

    For a length-delimited field, ``data[start:end]`` is its content; for the other
    types it is the encoded value. Groups (wire types 3 and 4, deprecated) and
    anything that runs past the end raise :class:`WireError`.
    """
    pos, size = 0, len(data)
    while pos < size:
        key, pos = _varint(data, pos)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise WireError(f"field number 0 at byte {pos}")
        start = pos
        if wire_type == _VARINT:
            _, pos = _varint(data, pos)
        elif wire_type == _I64:
            pos += 8
        elif wire_type == _I32:
            pos += 4
        elif wire_type == _LEN:
            length, start = _varint(data, pos)
            pos = start + length
        else:
            raise WireError(f"wire type {wire_type} at byte {start}")
        if pos > size:
            raise WireError(f"field {number} runs past the end ({pos} > {size} bytes)")
        yield number, wire_type, start, pos


def messages(data: bytes, number: int) -> list[bytes]:
    """The contents of the length-delimited fields numbered ``number``, in order.

    Fields of that number with another wire type are skipped, as a protobuf parser
    skips a field whose type does not match its schema.
    """
    return [data[s:e] for n, wire_type, s, e in fields(data) if n == number and wire_type == _LEN]
