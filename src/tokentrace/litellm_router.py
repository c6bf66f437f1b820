"""Route LiteLLM's ``Router`` by tokentrace's expected latency.

LiteLLM's ``latency-based-routing`` keeps the last ten response times (per output
token) of each deployment and sends a request to the lowest mean: it does not know
how long the prompt is, nor whether the model behind a deployment is loaded. This
strategy asks :func:`tokentrace.expected.expected_latency` instead: for a request of
*P* prompt tokens and about *O* output tokens, how long each deployment's model will
take right now, cold loads included, and sends the request to the fastest.

Install the extra and register the strategy on a router (LiteLLM's custom-strategy
hook, ``Router.register_plugin``; ``set_custom_routing_strategy`` is its deprecated
name)::

    pip install 'tokentrace[litellm]'

    from litellm import Router
    from tokentrace.litellm_router import route_by_expected_latency

    router = Router(model_list=[
        {"model_name": "chat", "litellm_params": {"model": "ollama_chat/llama3.2",
                                                  "api_base": "http://gpu-1:11434"}},
        {"model_name": "chat", "litellm_params": {"model": "openai/qwen2.5-7b",
                                                  "api_base": "http://gpu-2:8000/v1"},
         "model_info": {"tokentrace_model": "qwen2.5:7b"}},
    ])
    route_by_expected_latency(router)      # dsn: argument > TOKENTRACE_DSN > PG* > embedded
    router.completion(model="chat", messages=[...], max_tokens=200)

What the strategy does for each request to a model group:

1. **Candidates**: the group's deployments (``router.registry().deployments(group)``),
   minus those LiteLLM has put in cooldown (all of them if every one is).
2. **Which tokentrace model each one is**: ``model_info["tokentrace_model"]`` when set,
   else ``litellm_params["model"]`` with LiteLLM's provider prefix removed
   (``ollama_chat/llama3.2`` → ``llama3.2``; ``openai/meta-llama/Llama-3.1-8B`` →
   ``meta-llama/Llama-3.1-8B``: only a first segment that is a LiteLLM provider name
   goes). It must be the name tokentrace stores as ``model`` (the response model).
3. **The request's size**. Prompt tokens are *estimated* from the messages: the
   characters of their text content divided by 4 (the usual ~4 characters per token
   of BPE tokenizers on English text), plus 4 tokens per message for the chat
   template's role markers, at least 1. That is within about ±25 % for English prose
   and worse for code or other scripts, which is enough here: the estimate is the
   same for every candidate, and what matters is the prompt's size against the
   output's. An embeddings ``input`` is counted the same way. Output tokens are the
   request's ``max_completion_tokens`` or ``max_tokens`` (an upper bound, so long
   outputs are assumed when the caller allows them), else ``default_output_tokens``
   (256); 0 for embeddings.
4. **The pick**: the first *trusted* estimate in tokentrace's ranking (fastest first)
   that belongs to a candidate; several deployments of that model share the request
   by LiteLLM's own shuffle.
5. **Fallback**: LiteLLM's default strategy (``simple-shuffle``: by ``weight``, then
   ``rpm``, then ``tpm``, else uniform) over all candidates when tokentrace has no
   trusted estimate for any of them, when the store cannot be reached, or when
   anything else in tokentrace fails (``last_decision.reason`` says which:
   ``"no trusted estimate"``, ``"store unavailable"``, ``"tokentrace failed (…)"``,
   ``"backing off after a failure (…)"``).
   The strategy never raises into the caller; after a failure it does not ask again
   for ``retry_after_s`` (30 s), so an unreachable database costs one connection
   attempt per 30 s, not one per request (a request tokentrace refuses as bad input,
   a ``ValueError``, sets no back-off).
   (A host that drops packets makes libpq wait for its ``connect_timeout``: tokentrace
   sets 10 s unless the DSN or ``PGCONNECT_TIMEOUT`` says otherwise; put a shorter
   one in the DSN for routing.)

Each decision is kept as :attr:`TokentraceRoutingStrategy.last_decision` and, when the
request has a ``metadata`` dict, under ``metadata["tokentrace_routing"]`` (as LiteLLM's
own latency strategy leaves ``_latency_per_deployment`` there).

The strategy keeps its database connections between requests (up to 4 idle, for 5
minutes; :meth:`TokentraceRoutingStrategy.close` closes them): a new session's first
``expected_latency()`` builds the function's plans, which costs far more than the
answer itself. The async path (``router.acompletion``) runs the query in a worker
thread, so the event loop is not blocked while tokentrace answers.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from litellm import provider_list
from litellm.exceptions import BadRequestError
from litellm.types.router import CustomRoutingStrategyBase

from tokentrace.expected import Estimate, estimates
from tokentrace.reports import report_pool
from tokentrace.store.connection import resolve_dsn
from tokentrace.store.pool import ConnectionPool

__all__ = [
    "RoutingDecision",
    "TokentraceRoutingStrategy",
    "estimate_prompt_tokens",
    "route_by_expected_latency",
    "tokentrace_model",
]

logger = logging.getLogger(__name__)

CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4
DEFAULT_OUTPUT_TOKENS = 256
DEFAULT_RETRY_AFTER_S = 30.0
MODEL_INFO_KEY = "tokentrace_model"
METADATA_KEY = "tokentrace_routing"

_PROVIDERS = frozenset(str(getattr(p, "value", p)) for p in provider_list)


# --- pure helpers ------------------------------------------------------------------
def tokentrace_model(deployment: Mapping[str, Any]) -> str | None:
    """The model name tokentrace stores for ``deployment``'s calls (see the module doc)."""
    info = deployment.get("model_info")
    if isinstance(info, Mapping):
        named = info.get(MODEL_INFO_KEY)
        if isinstance(named, str) and named:
            return named
    params = deployment.get("litellm_params")
    model = params.get("model") if isinstance(params, Mapping) else None
    if not isinstance(model, str) or not model:
        return None
    prefix, slash, rest = model.partition("/")
    if slash and rest and prefix in _PROVIDERS:
        return rest
    return model


def _text_chars(content: Any) -> int:
    """Characters of text in a message's content (a string, or OpenAI content parts)."""
    if isinstance(content, str):
        return len(content)
    if isinstance(content, Sequence) and not isinstance(content, (bytes, bytearray)):
        total = 0
        for part in content:
            if isinstance(part, str):
                total += len(part)
            elif isinstance(part, Mapping) and isinstance(part.get("text"), str):
                total += len(part["text"])
        return total
    return 0


def estimate_prompt_tokens(messages: Any = None, input: Any = None) -> int:
    """Approximate prompt tokens: text characters / 4, plus 4 per chat message, at least 1."""
    tokens = 0
    if isinstance(messages, Sequence) and not isinstance(messages, (str, bytes)):
        for message in messages:
            tokens += TOKENS_PER_MESSAGE
            if isinstance(message, Mapping):
                chars = _text_chars(message.get("content"))
                tokens += -(-chars // CHARS_PER_TOKEN)
    if input is not None:
        items = [input] if isinstance(input, str) else input
        if isinstance(items, Sequence):
            for item in items:
                if isinstance(item, str):
                    tokens += -(-len(item) // CHARS_PER_TOKEN)
    return max(1, tokens)


def requested_output_tokens(
    request_kwargs: Mapping[str, Any] | None, default: int, *, embedding: bool
) -> int:
    """``max_completion_tokens`` or ``max_tokens`` of the request, else ``default``."""
    if embedding:
        return 0
    for key in ("max_completion_tokens", "max_tokens"):
        value = (request_kwargs or {}).get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return default


def _deployment_id(deployment: Mapping[str, Any]) -> str | None:
    info = deployment.get("model_info")
    ident = info.get("id") if isinstance(info, Mapping) else None
    return None if ident is None else str(ident)


@dataclass(frozen=True)
class RoutingDecision:
    """Why a deployment was picked: ``reason`` is ``"tokentrace"`` or a fallback's cause."""

    model_group: str
    prompt_tokens: int
    output_tokens: int
    reason: str
    model: str | None = None
    deployment_id: str | None = None
    expected_ms: float | None = None
    estimates: tuple[Estimate, ...] = field(default=(), repr=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "model_group": self.model_group,
            "prompt_tokens": self.prompt_tokens,
            "output_tokens": self.output_tokens,
            "reason": self.reason,
            "model": self.model,
            "deployment_id": self.deployment_id,
            "expected_ms": self.expected_ms,
        }


def _shuffle(deployments: Sequence[dict[str, Any]], model: str, request_kwargs: Any) -> dict[str, Any]:
    """LiteLLM's default strategy (``simple-shuffle``), as the router itself runs it."""
    try:
        from litellm.router_strategy.simple_shuffle import simple_shuffle

        return simple_shuffle(lambda _name: None, deployments, model, request_kwargs)
    except Exception:  # a LiteLLM whose shuffle moved or refuses these weights
        return random.choice(list(deployments))


# --- the strategy ------------------------------------------------------------------
class TokentraceRoutingStrategy(CustomRoutingStrategyBase):
    """A LiteLLM custom routing strategy backed by tokentrace's expected latency.

    ``router`` is the ``litellm.Router`` whose deployments it picks from; register it
    with ``router.register_plugin(strategy)`` (or use :func:`route_by_expected_latency`).
    ``dsn`` is tokentrace's database (argument > ``TOKENTRACE_DSN`` > libpq ``PG*``
    variables > the embedded server).
    """

    def __init__(
        self,
        router: Any,
        dsn: str | None = None,
        *,
        default_output_tokens: int = DEFAULT_OUTPUT_TOKENS,
        retry_after_s: float = DEFAULT_RETRY_AFTER_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if default_output_tokens < 0:
            raise ValueError(f"default_output_tokens must be >= 0, not {default_output_tokens}")
        if retry_after_s < 0:
            raise ValueError(f"retry_after_s must be >= 0, not {retry_after_s}")
        self.router = router
        self.dsn = dsn
        self.default_output_tokens = default_output_tokens
        self.retry_after_s = retry_after_s
        self._clock = clock
        self._lock = threading.Lock()
        self._store_down_until = 0.0
        self._pool: ConnectionPool | None = None
        self.last_decision: RoutingDecision | None = None

    def close(self) -> None:
        """Close the database connections the strategy keeps (it opens new ones if used again)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    def _ask(self, prompt: int, output: int, models: list[str]) -> list[Estimate]:
        # Connections are kept between requests: a new session's first expected_latency()
        # builds the function's plans, which costs more than the answer.
        with self._lock:
            if self._pool is None:
                self._pool = report_pool(resolve_dsn(self.dsn))
            pool = self._pool
        return pool.run(lambda conn: estimates(conn, prompt, output, models))

    # LiteLLM's hook: both return an element of the router's model list.
    def get_available_deployment(  # type: ignore[override]
        self,
        model: str,
        messages: list[dict[str, str]] | None = None,
        input: str | list[object] | None = None,
        specific_deployment: bool | None = False,
        request_kwargs: dict[str, object] | None = None,
    ) -> dict[str, Any]:
        return self._pick(model, messages, input, specific_deployment, request_kwargs)

    async def async_get_available_deployment(  # type: ignore[override]
        self,
        model: str,
        messages: list[dict[str, str]] | None = None,
        input: str | list[object] | None = None,
        specific_deployment: bool | None = False,
        request_kwargs: dict[str, object] | None = None,
    ) -> dict[str, Any]:
        return await asyncio.to_thread(
            self._pick, model, messages, input, specific_deployment, request_kwargs
        )

    # --- the pick ------------------------------------------------------------------
    def _pick(
        self,
        model: str,
        messages: Any,
        input: Any,
        specific_deployment: bool | None,
        request_kwargs: dict[str, object] | None,
    ) -> dict[str, Any]:
        candidates = self._candidates(model, specific_deployment)
        if not candidates:
            # What the router raises without this strategy (a caller's error, not tokentrace's).
            raise BadRequestError(
                message=f"You passed in model={model}. There are no healthy deployments for this model",
                model=model,
                llm_provider="",
            )
        embedding = messages is None and input is not None
        prompt = estimate_prompt_tokens(messages, input)
        output = requested_output_tokens(
            request_kwargs, self.default_output_tokens, embedding=embedding
        )
        chosen, decision = self._choose(model, candidates, prompt, output, request_kwargs)
        self.last_decision = decision
        metadata = (request_kwargs or {}).get("metadata")
        if isinstance(metadata, dict):
            metadata[METADATA_KEY] = decision.to_json()
        return chosen

    def _candidates(self, model: str, specific_deployment: bool | None) -> list[dict[str, Any]]:
        registry = self.router.registry()
        if specific_deployment:
            # A request for one deployment names it by its litellm_params model.
            for deployment in registry.all():
                if (deployment.get("litellm_params") or {}).get("model") == model:
                    return [deployment]
        return self._without_cooldowns(list(registry.deployments(model) or []))

    def _without_cooldowns(self, group: list[dict[str, Any]]) -> list[dict[str, Any]]:
        ids = [i for i in (_deployment_id(d) for d in group) if i is not None]
        try:
            cooling = {i for i, _ in self.router.health().cooldowns.get_active_cooldowns(ids, None)}
        except Exception:  # cooldown state is LiteLLM's; without it, all candidates stay
            return group
        kept = [d for d in group if _deployment_id(d) not in cooling]
        return kept or group

    def _choose(
        self,
        model: str,
        candidates: list[dict[str, Any]],
        prompt: int,
        output: int,
        request_kwargs: Any,
    ) -> tuple[dict[str, Any], RoutingDecision]:
        by_model: dict[str, list[dict[str, Any]]] = {}
        for deployment in candidates:
            name = tokentrace_model(deployment)
            if name is not None:
                by_model.setdefault(name, []).append(deployment)

        def fallback(reason: str, estimates: Sequence[Estimate] = ()) -> tuple[dict[str, Any], RoutingDecision]:
            picked = _shuffle(candidates, model, request_kwargs)
            return picked, RoutingDecision(
                model, prompt, output, reason, tokentrace_model(picked), _deployment_id(picked),
                None, tuple(estimates),
            )

        if not by_model:
            return fallback("no tokentrace model names")
        with self._lock:
            down_for = self._store_down_until - self._clock()
        if down_for > 0:
            return fallback(f"backing off after a failure (next try in {down_for:.0f} s)")
        try:
            ranked = self._ask(prompt, output, sorted(by_model))
        except Exception as exc:  # telemetry never fails the caller's request
            unavailable = _unavailable(exc)
            if not isinstance(exc, ValueError) or unavailable:
                # A request tokentrace refuses (ValueError: e.g. a model name too long)
                # says nothing of the next one; anything else would fail it too.
                with self._lock:
                    self._store_down_until = self._clock() + self.retry_after_s
            logger.warning(
                "tokentrace: no expected latency for %r (%s: %s); routing by LiteLLM's shuffle%s",
                model, type(exc).__name__, _describe(exc),
                "" if isinstance(exc, ValueError) and not unavailable
                else f" for {self.retry_after_s:.0f} s",
            )
            reason = "store unavailable" if unavailable else f"tokentrace failed ({type(exc).__name__})"
            return fallback(reason)
        for estimate in ranked:
            if estimate.trusted and estimate.expected_ms is not None and estimate.model in by_model:
                group = by_model[estimate.model]
                picked = group[0] if len(group) == 1 else _shuffle(group, model, request_kwargs)
                return picked, RoutingDecision(
                    model, prompt, output, "tokentrace", estimate.model, _deployment_id(picked),
                    estimate.expected_ms, tuple(ranked),
                )
        return fallback("no trusted estimate", ranked)


def _describe(exc: BaseException) -> str:
    from tokentrace.store.errors import describe

    return describe(exc)


def _unavailable(exc: BaseException) -> bool:
    from tokentrace.store.errors import StoreUnavailable, is_unavailable

    return is_unavailable(exc) or isinstance(exc, StoreUnavailable)


def route_by_expected_latency(
    router: Any,
    dsn: str | None = None,
    *,
    default_output_tokens: int = DEFAULT_OUTPUT_TOKENS,
    retry_after_s: float = DEFAULT_RETRY_AFTER_S,
) -> TokentraceRoutingStrategy:
    """Make ``router`` pick deployments by tokentrace's expected latency; returns the strategy."""
    strategy = TokentraceRoutingStrategy(
        router, dsn, default_output_tokens=default_output_tokens, retry_after_s=retry_after_s
    )
    router.register_plugin(strategy)
    return strategy
