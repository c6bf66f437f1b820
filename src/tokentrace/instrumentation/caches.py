"""What a call starts with, computed once and shared: per server, per operation and model.

Every call of one operation on one model at one server starts its span with the
same name and attributes and records its metrics under the same attributes. So
that this is not rebuilt on every call (the instrumentation runs on every model
call), it is computed once and kept:

* :class:`Servers` — a :class:`Server` per client base URL object: its
  ``server.*`` attributes and provider, read from the URL once.
* :class:`Server` — a :class:`Shape` per ``(operation, model, stream)``.
* :class:`Shape` — the span's name and start attributes, the metrics' attributes,
  and, per response model, the metrics' attributes with it.

Each cache is bounded: it is emptied when it grows past a few dozen (or hundred)
entries, so a stream of distinct models or URLs cannot grow it without limit.
What they hand out is shared and never mutated.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from tokentrace import attributes as A
from tokentrace.instrumentation._metrics import TokenAttrs, token_attrs

__all__ = ["Server", "Servers", "Shape"]


class Shape:
    """What every call of one operation on one model at one server starts with.

    The span's name and start attributes, the metrics' attributes (those less
    ``gen_ai.request.stream``), and, per response model, the metrics' attributes
    with it: built once, shared by the calls, never mutated.
    """

    __slots__ = ("_responses", "attrs", "metric_attrs", "name")

    _MAX = 64

    def __init__(
        self, operation: str, provider: str, model: str, server: Mapping[str, Any], stream: bool
    ) -> None:
        self.name = f"{operation} {model}"
        attrs = {
            A.GEN_AI_OPERATION_NAME: operation,
            A.GEN_AI_PROVIDER_NAME: provider,
            A.GEN_AI_REQUEST_MODEL: model,
            **server,
        }
        self.metric_attrs: Mapping[str, Any] = attrs
        self.attrs: Mapping[str, Any] = (
            {**attrs, A.GEN_AI_REQUEST_STREAM: True} if stream else attrs
        )
        self._responses: dict[str, tuple[Mapping[str, Any], TokenAttrs]] = {}

    def for_response_model(self, model: str) -> tuple[Mapping[str, Any], TokenAttrs]:
        """:attr:`metric_attrs` plus ``gen_ai.response.model`` = ``model``, and their
        :func:`~tokentrace.instrumentation._metrics.token_attrs`."""
        hit = self._responses.get(model)
        if hit is None:
            if len(self._responses) >= self._MAX:
                self._responses.clear()
            attrs = {**self.metric_attrs, A.GEN_AI_RESPONSE_MODEL: model}
            hit = self._responses[model] = (attrs, token_attrs(attrs))
        return hit


class Server:
    """One server (a client's base URL): its ``server.*`` attributes, provider and shapes."""

    __slots__ = ("_shapes", "attrs", "provider")

    _MAX = 256

    def __init__(self, provider: str, attrs: Mapping[str, Any]) -> None:
        self.provider = provider
        self.attrs = attrs  # server.address, server.port (and the provider, for OpenAI)
        self._shapes: dict[tuple[str, str, bool], Shape] = {}

    def shape(self, operation: str, model: str, stream: bool) -> Shape:
        """The :class:`Shape` of a call of ``operation`` on ``model`` at this server."""
        key = (operation, model, stream)
        shape = self._shapes.get(key)
        if shape is None:
            if len(self._shapes) >= self._MAX:
                self._shapes.clear()
            shape = self._shapes[key] = Shape(operation, self.provider, model, self.attrs, stream)
        return shape


class Servers:
    """A :class:`Server` per base URL, computed once per URL object.

    Clients keep one immutable ``httpx.URL`` as their base URL; reading its host and
    port and choosing a provider once per URL object, not once per call, keeps that
    off the hot path. Entries are keyed by ``id`` and hold the URL itself, so an id
    cannot be reused while its entry lives; the cache is emptied when it grows past
    a few dozen URLs.
    """

    __slots__ = ("_cache", "_compute")

    _MAX = 64

    def __init__(self, compute: Callable[[Any], Server]) -> None:
        self._compute = compute
        self._cache: dict[int, tuple[Any, Server]] = {}

    def __call__(self, url: Any) -> Server:
        """The server at ``url``: shared, its attributes never to be mutated."""
        hit = self._cache.get(id(url))
        if hit is not None and hit[0] is url:
            return hit[1]
        server = self._compute(url)
        if len(self._cache) >= self._MAX:
            self._cache.clear()
        self._cache[id(url)] = (url, server)
        return server
