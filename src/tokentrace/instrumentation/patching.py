"""Deferred patching: a library's methods wrapped when it is imported, and put back.

:class:`Patcher` wraps a library's methods with ``wrapt`` as soon as the library is
imported (at once when it already is), so instrumenting an installed but unused
library costs nothing: importing ``transformers`` (and torch) takes seconds.
``remove()`` puts every original back, found in the class ``__dict__`` so that a
``classmethod`` is restored as the descriptor it was, wherever other wrappers have
put tokentrace's in the chain since.

A :class:`Patcher` made with ``outermost=True`` keeps its wrappers above any
applied later (see :meth:`Patcher.restack`), for instrumentations whose span a
wrapper below them cannot see (OpenLLMetry's Ollama wrapper).

:class:`BaseInstrumentor` is OpenTelemetry's, under a name mypy can see.
"""

from __future__ import annotations

import functools
import logging
import threading
import weakref
from collections.abc import Callable, Collection
from types import ModuleType
from typing import TYPE_CHECKING, Any

import wrapt

from tokentrace.instrumentation.guard import guard

if TYPE_CHECKING:
    # The upstream module is marked `# type: ignore`, so mypy sees no class there:
    # this stand-in declares the part of its interface tokentrace relies on.
    class BaseInstrumentor:
        is_instrumented_by_opentelemetry: bool

        def instrument(self, **kwargs: Any) -> None: ...
        def uninstrument(self, **kwargs: Any) -> None: ...
        def instrumentation_dependencies(self) -> Collection[str]: ...
        def _instrument(self, **kwargs: Any) -> None: ...
        def _uninstrument(self, **kwargs: Any) -> None: ...

else:
    from opentelemetry.instrumentation.instrumentor import BaseInstrumentor

__all__ = ["BaseInstrumentor", "Patcher", "Wrapper"]

_log = logging.getLogger(__name__)

Wrapper = Callable[[Callable[..., Any], Any, tuple[Any, ...], dict[str, Any]], Any]
"""A ``wrapt`` wrapper: ``(wrapped, instance, args, kwargs) -> result``."""


class _Patch:
    """One method tokentrace wrapped: where, with what, and the wrapper object itself."""

    __slots__ = ("method", "owner", "wrapper", "wrapping")

    def __init__(self, owner: type, method: str, wrapper: Wrapper, wrapping: Any) -> None:
        self.owner = owner
        self.method = method
        self.wrapper = wrapper
        self.wrapping = wrapping  # the FunctionWrapper, wherever it now is in the chain


def _unlink(owner: type, method: str, wrapping: Any) -> bool:
    """Take ``wrapping`` out of the chain of wrappers on ``owner.method``; False if absent.

    On top, the attribute is set back to what it wraps; below another wrapper, that
    wrapper is made to wrap what ``wrapping`` wrapped (wrapt lets ``__wrapped__`` be
    set), so the wrappers applied after tokentrace's stay as they are.
    """
    node: Any = vars(owner).get(method)
    if node is wrapping:
        setattr(owner, method, wrapping.__wrapped__)
        return True
    while isinstance(node, wrapt.FunctionWrapper):
        inner: Any = node.__wrapped__
        if inner is wrapping:
            # wrapt proxies accept a new __wrapped__ (typed as read-only in its stubs)
            setattr(node, "__wrapped__", wrapping.__wrapped__)  # noqa: B010
            return True
        node = inner
    return False


class Patcher:
    """Wraps methods of a library's classes once the library is imported.

    Targets are ``(module, "Class.method", wrapper)``. :meth:`apply` registers a
    post-import hook per module (wrapt runs it at once for a module already
    imported); :meth:`remove` unwraps what was wrapped, wherever other wrappers
    have put it in the chain since, and disarms hooks that have not fired yet, so a
    later import wraps nothing.

    ``outermost=True``: after any ``BaseInstrumentor.instrument()`` (in process, or
    by ``opentelemetry-instrument``) the wrappers are put back on top of any
    applied over them since (:meth:`restack`), so tokentrace's wrapper runs first
    whatever the order of instrumenting.
    """

    def __init__(self, outermost: bool = False) -> None:
        self._targets: list[tuple[str, str, Wrapper]] = []
        self._wrapped: list[_Patch] = []
        self._generation = 0
        self._lock = threading.Lock()
        self._outermost = outermost

    def add(self, module: str, path: str, wrapper: Wrapper) -> None:
        self._targets.append((module, path, wrapper))

    def apply(self) -> None:
        with self._lock:
            self._generation += 1
            generation = self._generation
        if self._outermost:
            _keep_outermost(self)
        for module in dict.fromkeys(target[0] for target in self._targets):
            hook = functools.partial(self._on_import, generation, module)
            wrapt.register_post_import_hook(hook, module)

    def _on_import(self, generation: int, name: str, module: ModuleType) -> None:
        with self._lock:
            if generation != self._generation:
                return  # uninstrumented (or re-instrumented) since this hook was set
            for target_module, path, wrapper in self._targets:
                if target_module == name:
                    self._wrap(module, path, wrapper)

    def _wrap(self, module: ModuleType, path: str, wrapper: Wrapper) -> None:
        class_name, method = path.rsplit(".", 1)
        owner = getattr(module, class_name, None)
        if not isinstance(owner, type) or method not in vars(owner):
            _log.debug("tokentrace: %s.%s not found; not instrumented", module.__name__, path)
            return
        wrapt.wrap_function_wrapper(owner, method, wrapper)
        self._wrapped.append(_Patch(owner, method, wrapper, vars(owner)[method]))

    def restack(self) -> None:
        """Put each wrapper back on top of the wrappers applied over it since.

        Another instrumentation that wraps the same method after tokentrace runs
        first. OpenLLMetry's Ollama wrapper then starts its span without making it
        current, so tokentrace's below it cannot see it (and records a second span);
        on top, tokentrace sets OpenLLMetry's suppression key (see
        :mod:`tokentrace.instrumentation.suppression`) and OpenLLMetry's skips.
        The wrapper is taken out of its place in the chain (:func:`_unlink`) and
        wrapped around the whole chain afresh.
        """
        with self._lock:
            for patch in self._wrapped:
                owner, method = patch.owner, patch.method
                if vars(owner).get(method) is patch.wrapping:
                    continue  # on top still: the common case
                if not _unlink(owner, method, patch.wrapping):
                    continue  # no longer there: someone put the original back
                patch.wrapping = wrapt.FunctionWrapper(vars(owner)[method], patch.wrapper)
                setattr(owner, method, patch.wrapping)

    def remove(self) -> None:
        with self._lock:
            self._generation += 1
            wrapped, self._wrapped = self._wrapped, []
        _OUTERMOST.discard(self)
        for patch in reversed(wrapped):
            _unlink(patch.owner, patch.method, patch.wrapping)


# Patchers that keep their wrappers on top (see Patcher.restack), and whether
# BaseInstrumentor.instrument is wrapped to restack them after every instrument().
_OUTERMOST: weakref.WeakSet[Patcher] = weakref.WeakSet()
_restacking = False
_restacking_lock = threading.Lock()


def _keep_outermost(patcher: Patcher) -> None:
    global _restacking
    _OUTERMOST.add(patcher)
    with _restacking_lock:
        if _restacking:
            return
        _restacking = True
    from opentelemetry.instrumentation import instrumentor

    # Every instrumentation of the OpenTelemetry kind (OpenLLMetry's, OpenLIT's,
    # OpenInference's, and what opentelemetry-instrument loads) patches inside
    # BaseInstrumentor.instrument(): just after it is the moment to restack, before
    # any call is made through the new wrapper. Never removed: with no patcher left
    # it only calls through.
    base = getattr(instrumentor, "BaseInstrumentor")  # noqa: B009 - untyped upstream
    wrapt.wrap_function_wrapper(base, "instrument", _restack_after)


def _restack_after(
    wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    try:
        return wrapped(*args, **kwargs)
    finally:
        for patcher in list(_OUTERMOST):
            guard(patcher.restack)
