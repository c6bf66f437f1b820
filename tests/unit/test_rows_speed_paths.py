"""The export path's shortcuts give exactly what the general code they skip gives.

Each shortcut (fields read without properties, the resource cache, the dict copy of
known-key attributes, the unrolled figures, the formatter-level COPY loop) has a
general path next to it; these tests hold the two to the same result.
"""

from __future__ import annotations

import math
from types import MappingProxyType
from typing import Any

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from tokentrace import attributes as A
from tokentrace.dialects import normalize
from tokentrace.efficiency import _ATTRIBUTE_KEYS, Efficiency
from tokentrace.exporter import spans as S
from tokentrace.processor import TokenEfficiencySpanProcessor, underived_attributes
from tokentrace.store import rows as R
from tokentrace.store import writer as W

CHAT: dict[str, Any] = {
    A.GEN_AI_OPERATION_NAME: "chat",
    A.GEN_AI_REQUEST_MODEL: "m",
    A.GEN_AI_USAGE_INPUT_TOKENS: 12,
    A.GEN_AI_USAGE_OUTPUT_TOKENS: 40,
    "gen_ai.response.finish_reasons": ("stop",),
}


class _Keep:
    """A processor's ``on_end`` target that keeps what it is given."""

    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def on_end(self, span: ReadableSpan) -> None:
        self.spans.append(span)


def _span(
    attributes: dict[str, Any] | None = None,
    *,
    resource: Resource | None = None,
    parent: SpanContext | None = None,
    context: SpanContext | None = SpanContext(7, 9, False, TraceFlags(1)),
    status: Status | None = None,
    end_time: int = 1_700_000_000_800_000_000,
) -> ReadableSpan:
    return ReadableSpan(
        name="chat m",
        context=context,
        parent=parent,
        resource=resource or Resource({"service.name": "svc"}),
        attributes=dict(CHAT) if attributes is None else attributes,
        kind=SpanKind.CLIENT,
        status=status or Status(StatusCode.ERROR, "boom"),
        start_time=1_700_000_000_000_000_000,
        end_time=end_time,
    )


def _forwarded(span: ReadableSpan) -> ReadableSpan:
    keep = _Keep()
    TokenEfficiencySpanProcessor(keep).on_end(span)  # type: ignore[arg-type]
    (out,) = keep.spans
    return out


def _variants() -> list[ReadableSpan]:
    plain = [
        _span(),
        _span(parent=SpanContext(7, 3, False)),
        _span(context=None),
        _span(status=Status(StatusCode.OK)),
        _span({"x": "y"}),
        _span({**CHAT, "note": "a\x00b", "n": math.nan}),
        # The cases where the processor's figures could make another row:
        _span({**CHAT, A.TT_MS_PER_TOKEN: 1.0, A.TT_TOKEN_SOURCE: "estimated"}),
        _span({**CHAT, "gen_ai.request.model": "m" * 70_000}),
        _span(end_time=1_699_999_999_000_000_000),
        _span(context=SpanContext(7, 9, False, TraceFlags(0))),
    ]
    return plain + [_forwarded(span) for span in plain]


class _Subclass(ReadableSpan):
    """A span type the fast paths do not know: its properties must be used."""

    @property
    def name(self) -> str:
        return "renamed"


def test_the_sdk_layout_is_recognised() -> None:
    # If this fails, an SDK release changed its fields: every span then takes the
    # (slower) properties, which is correct but should be looked at.
    assert S._SDK_LAYOUT


@pytest.mark.parametrize("span", _variants())
def test_fields_read_directly_equal_the_properties(
    span: ReadableSpan, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert S._sdk_state(span) is span.__dict__
    fast, key = S.span_data(span), S._key(span)
    lean = S.span_data(span, CHAT, with_resource=False)
    monkeypatch.setattr(S, "_SDK_LAYOUT", False)  # every span takes the properties
    assert S._sdk_state(span) is None
    assert fast == S.span_data(span)
    assert lean == S.span_data(span, CHAT, with_resource=False)
    assert key == S._key(span) == (
        (span.start_time or 0) // 1000,
        span.context.trace_id if span.context else 0,
        span.context.span_id if span.context else 0,
    )


def test_unknown_span_types_take_the_properties() -> None:
    base = _span()
    odd = _Subclass(
        name="chat m", context=base.context, resource=base.resource, attributes=dict(CHAT),
        start_time=base.start_time, end_time=base.end_time,
    )  # fmt: skip
    assert S._sdk_state(odd) is None
    assert S.span_data(odd).name == "renamed"


def test_span_data_without_the_resource_leaves_out_only_the_resource() -> None:
    span = _forwarded(_span())
    full = S.span_data(span, CHAT)
    lean = S.span_data(span, CHAT, with_resource=False)
    assert lean.resource == {} and full.resource == {"service.name": "svc"}
    lean.resource = full.resource
    assert lean == full


def test_span_row_equals_build_row_of_span_data() -> None:
    # span_data(span) of a forwarded span reads the processor's attributes (figures
    # included): span_row, which derives them once, must store exactly that row.
    for span in _variants():
        if span.context is None:
            continue
        cache = S.ResourceCache(65_536)
        row = S.span_row(span, 65_536, cache)
        assert row == R.build_row(S.span_data(span), 65_536)


def test_build_row_reads_the_derived_attributes_only_where_they_could_differ() -> None:
    reads: list[str] = []
    for span in _variants()[len(_variants()) // 2 :]:  # the forwarded ones
        source = underived_attributes(span)
        if span.context is None or source is None:
            continue
        data = S.span_data(span, dict(source))
        reads.clear()

        def derived(span: ReadableSpan = span) -> Any:
            reads.append(span.name)
            return span.attributes

        row = R.build_row(data, 65_536, derived=derived)
        assert row == R.build_row(S.span_data(span), 65_536)
        could_differ = (
            "note" in source or A.TT_MS_PER_TOKEN in source or len(source[A.GEN_AI_REQUEST_MODEL]) > 1000
        )
        assert len(reads) == (1 if could_differ else 0), dict(source)


def test_resource_cache_serves_each_resource_its_own_cleaning() -> None:
    cache = S.ResourceCache(65_536)
    first = Resource({"service.name": "a"})
    second = Resource({"service.name": "b\x00"})
    assert cache.get(first).values == {"service.name": "a"}
    assert cache.get(first) is cache.get(first)  # cleaned once
    # A different resource right after is not given the last one's result ...
    assert cache.get(second).values == {"service.name": "b\ufffd"}
    assert cache.get(second).changes
    # ... nor is the first one given the second's, nor a span without a resource.
    assert cache.get(first).values == {"service.name": "a"}
    assert cache.get(None).values == {}
    assert cache.get(first).values == {"service.name": "a"}


def test_resource_cache_is_per_batch_so_a_new_resource_is_cleaned_again() -> None:
    resource = Resource({"service.name": "a"})
    assert S.ResourceCache(65_536).get(resource).values == {"service.name": "a"}
    changed = Resource({"service.name": "changed"})
    assert S.ResourceCache(65_536).get(changed).values == {"service.name": "changed"}


HOSTILE: dict[str, Any] = {
    "plain": "text",
    "nul": "a\x00b",
    "long": "x" * 100,
    "unicode": "é",
    "surrogate": "\ud800",
    "int": 2**70,
    "nan": math.nan,
    "inf": -math.inf,
    "tuple": ("a", "b"),
    "mixed": ("a", 1, math.nan),
    "bytes": b"\x00\x01",
    "nested": {"k": [1, {"z": math.inf}]},
    "none": None,
    "bool": True,
}


def test_known_key_dicts_are_cleaned_like_any_mapping() -> None:
    R._PLAIN_KEYS.update(HOSTILE)  # as after a first span with these keys
    fast, general = R._Sanitizer(50), R._Sanitizer(50)
    cleaned = fast.mapping(HOSTILE)
    assert cleaned == general.mapping(MappingProxyType(HOSTILE))
    assert list(cleaned) == list(HOSTILE)
    assert fast.changed and fast.changed == general.changed


def test_figures_are_added_in_field_order() -> None:
    figures = Efficiency(1.0, 2.0, 3.0, 4.0, 5.0, 6.0, "reported")
    out: dict[str, Any] = {"first": 0}
    figures.add_to(out)
    assert list(out) == ["first", *_ATTRIBUTE_KEYS]
    assert list(out.values())[1:] == list(figures)
    assert Efficiency(ms_per_token=2.0).as_attributes() == {A.TT_MS_PER_TOKEN: 2.0}


def test_normalize_reads_any_mapping_the_same() -> None:
    attrs = {**CHAT, A.GEN_AI_REQUEST_STREAM: "TRUE", A.GEN_AI_SERVER_TIME_TO_FIRST_TOKEN: 0.25}
    assert normalize(attrs) == normalize(MappingProxyType(attrs))
    assert normalize(attrs).stream is True and normalize(attrs).ttft_s == 0.25


class _Formatter:
    def __init__(self) -> None:
        self.rows: list[Any] = []

    def write_row(self, row: Any) -> bytes:
        self.rows.append(row)
        return b"full" if len(self.rows) % 2 == 0 else b""


class _Copy:
    def __init__(self, formatter: _Formatter | None) -> None:
        if formatter is not None:
            self.formatter = formatter
        self.written: list[Any] = []
        self.rows: list[Any] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def write_row(self, row: Any) -> None:
        self.rows.append(row)


def test_copy_loop_sends_every_row_and_every_full_buffer() -> None:
    formatter = _Formatter()
    copy = _Copy(formatter)
    kept: list[Any] = []
    W._send(copy, iter([(1,), (2,), (3,)]), kept.append)  # type: ignore[arg-type]
    assert formatter.rows == kept == [(1,), (2,), (3,)]
    assert copy.written == [b"full"]  # empty buffers are not written


def test_copy_loop_without_a_formatter_uses_write_row() -> None:
    copy = _Copy(None)
    W._send(copy, [(1,), (2,)], None)  # type: ignore[arg-type]
    assert copy.rows == [(1,), (2,)]
