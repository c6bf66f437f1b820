"""Reading a client's response objects and base URL cheaply.

Response fields are read on every call, and many are absent (an embeddings
response has no choices, few responses carry llama.cpp's ``timings``). A pydantic
model answers a missing attribute through its Python ``__getattr__``, which
raises: several µs per miss. :func:`field` and :func:`fields` read the model's
``__dict__`` (and ``__pydantic_extra__``) instead; :func:`base_url` reads an HTTP
client's base URL without the property that, in recent ``openai`` releases,
imports a module on every read.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

__all__ = ["base_url", "field", "fields"]


def field(obj: Any, name: str) -> Any:
    """``getattr(obj, name, None)``, cheap for pydantic models when ``name`` is absent.

    A pydantic model's fields are in ``__dict__`` and, for models that allow extra
    fields (``openai``'s), the extras in ``__pydantic_extra__``.
    """
    if obj is None:  # an absent nested object (e.g. usage details): the common case
        return None
    values = getattr(obj, "__dict__", None)
    if values is not None and name in values:
        return values[name]
    extra = getattr(obj, "__pydantic_extra__", None)
    if type(extra) is dict:
        return extra.get(name)
    return getattr(obj, name, None)


def fields(obj: Any) -> Callable[[str], Any]:
    """``functools.partial(field, obj)``, as one dict's ``get`` where it can be.

    For a pydantic model that keeps extra fields (``openai``'s) :func:`field` reads
    ``__dict__``, then ``__pydantic_extra__``, never the class: one merged dict says
    the same, at a fraction of the cost when several fields are read.
    """
    values = getattr(obj, "__dict__", None)
    extra = getattr(obj, "__pydantic_extra__", None)
    if type(values) is dict and type(extra) is dict:
        return {**extra, **values}.get if extra else values.get
    return functools.partial(field, obj)


def base_url(client: Any) -> Any:
    """An HTTP client's base URL (an ``httpx.URL``).

    Read from the instance when it is there (``httpx`` keeps it as ``_base_url``
    behind its ``base_url`` property; in recent ``openai`` releases that property
    imports a module on every read), else through the property.
    """
    state = getattr(client, "__dict__", None)
    url = state.get("_base_url") if state is not None else None
    return url if url is not None else client.base_url
