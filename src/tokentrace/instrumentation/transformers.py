"""Hugging Face ``transformers`` instrumentation: model loads and ``generate`` in process.

Usage::

    from tokentrace.instrumentation.transformers import TransformersInstrumentor

    TransformersInstrumentor().instrument()    # or tokentrace.instrument()
    model = AutoModelForCausalLM.from_pretrained("Qwen/Qwen2.5-0.5B")   # load_model span
    model.generate(**tokenizer("Hello", return_tensors="pt"), max_new_tokens=20)

* ``from_pretrained`` of any ``PreTrainedModel`` (``AutoModel…`` classes included,
  which delegate to it) → a ``load_model {name or path}`` span, kind ``INTERNAL``,
  with ``tokentrace.load_source = client`` (timed in this process),
  ``tokentrace.model.device`` (``cpu``, ``cuda:0`` …) and ``tokentrace.model.dtype``
  (``float32``, ``bfloat16`` …). A load nested in another (sub-models) is part of
  the outer span.
* ``generate`` → a ``text_completion {name or path}`` span, kind ``INTERNAL``, with
  real token counts from the tensors: ``gen_ai.usage.input_tokens`` = the prompt's
  tokens over the batch (padding excluded when an ``attention_mask`` is given) and
  ``gen_ai.usage.output_tokens`` = the new tokens only, each sequence counted up to
  its first end-of-sequence token. The processor derives ms/token from these.
* With a streamer (``TextIteratorStreamer``, ``TextStreamer`` or any
  ``BaseStreamer``), ``gen_ai.response.time_to_first_chunk`` is the time to the first
  generated token and ``tokentrace.stream.generation_ms`` the time from the first
  to the last, so decode ms/token is known too. (When ``generate`` runs in a thread,
  as with ``TextIteratorStreamer``, the span has no parent unless the thread is
  given the caller's context.)

``gen_ai.provider.name`` is ``transformers``. Importing ``transformers`` is not
triggered by instrumenting: the methods are wrapped when the application imports it.
"""

from __future__ import annotations

import contextvars
import os
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from time import perf_counter_ns
from typing import TYPE_CHECKING, Any

import wrapt
from opentelemetry.instrumentation.utils import is_instrumentation_enabled
from opentelemetry.trace import SpanKind

from tokentrace import attributes as A
from tokentrace.instrumentation.call import Call
from tokentrace.instrumentation.guard import guard
from tokentrace.instrumentation.patching import BaseInstrumentor, Patcher
from tokentrace.instrumentation.recording import RecordingTools, recording_tools

__all__ = ["TransformersInstrumentor"]

PROVIDER = "transformers"
# Nested loads (sub-models) and nested generates (assisted decoding's draft model)
# belong to the outer span.
_LOADING: contextvars.ContextVar[bool] = contextvars.ContextVar("tokentrace_loading", default=False)
_GENERATING: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "tokentrace_generating", default=False
)

if TYPE_CHECKING:
    _Proxy = wrapt.ObjectProxy[Any]
else:  # wrapt before 2.0 has no subscriptable ObjectProxy
    _Proxy = wrapt.ObjectProxy


def _base_attrs(operation: str, name: str) -> dict[str, Any]:
    return {
        A.GEN_AI_OPERATION_NAME: operation,
        A.GEN_AI_PROVIDER_NAME: PROVIDER,
        A.GEN_AI_REQUEST_MODEL: name,
    }


def _record_model(attrs: dict[str, Any], model: Any) -> None:
    """Where the loaded model lives and in which precision."""
    device = getattr(model, "device", None)
    if device is not None:
        attrs[A.TT_MODEL_DEVICE] = str(device)
    dtype = getattr(model, "dtype", None)
    if dtype is not None:
        attrs[A.TT_MODEL_DTYPE] = str(dtype).removeprefix("torch.")


def _record_loaded(call: Call, result: Any) -> None:
    if call.recording:
        # output_loading_info=True returns (model, info)
        _record_model(call.attrs, result[0] if isinstance(result, tuple) else result)


def _load_name(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str:
    source = args[0] if args else kwargs.get("pretrained_model_name_or_path")
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    return str(source) if source is not None else ""


def _load_wrapper(tools: RecordingTools) -> Callable[..., Any]:
    def traced_from_pretrained(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        if _LOADING.get() or not is_instrumentation_enabled():
            return wrapped(*args, **kwargs)
        name = _load_name(args, kwargs)
        attrs = _base_attrs(A.OP_LOAD_MODEL, name)
        attrs[A.TT_LOAD_SOURCE] = "client"
        call = Call(tools, f"{A.OP_LOAD_MODEL} {name}", SpanKind.INTERNAL, attrs)
        loading = _LOADING.set(True)
        try:
            with call:
                result = wrapped(*args, **kwargs)
        finally:
            _LOADING.reset(loading)
        call.end(_record_loaded, result)
        return result

    return traced_from_pretrained


@dataclass(frozen=True, slots=True)
class _Prompt:
    """The prompt side of a ``generate`` call, read from its tensors."""

    input_tokens: int | None
    output_offset: int  # where new tokens start in the returned sequences


def _prompt(model: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> _Prompt:
    ids = args[0] if args else kwargs.get("inputs", kwargs.get("input_ids"))
    embeds = kwargs.get("inputs_embeds")
    source = ids if ids is not None else embeds
    shape = tuple(getattr(source, "shape", ()))
    mask = kwargs.get("attention_mask")
    if mask is not None and getattr(mask, "ndim", 0) == 2:
        input_tokens: int | None = int(mask.sum())
    elif len(shape) >= 2:
        input_tokens = int(shape[0]) * int(shape[1])
    else:
        input_tokens = None
    if getattr(getattr(model, "config", None), "is_encoder_decoder", False):
        decoder_ids = kwargs.get("decoder_input_ids")
        offset = int(decoder_ids.shape[1]) if decoder_ids is not None else 1
    elif ids is None:
        offset = 0  # from embeddings alone, generate returns only the new tokens
    else:
        offset = int(shape[1]) if len(shape) >= 2 else 0
    return _Prompt(input_tokens, offset)


def _eos_ids(model: Any, kwargs: Mapping[str, Any]) -> list[int]:
    eos = kwargs.get("eos_token_id")
    if eos is None:
        config = kwargs.get("generation_config") or getattr(model, "generation_config", None)
        eos = getattr(config, "eos_token_id", None)
    if eos is None:
        return []
    if isinstance(eos, int):
        return [eos]
    return [int(e) for e in (eos.tolist() if hasattr(eos, "tolist") else eos)]


def _new_tokens(sequences: Any, offset: int, eos_ids: list[int]) -> int:
    """New tokens over all sequences, each counted up to its first EOS (included)."""
    import torch

    new = sequences[:, offset:]
    if new.numel() == 0 or not eos_ids:
        return int(new.numel())
    is_eos = torch.isin(new, torch.tensor(eos_ids, device=new.device))
    first_eos = is_eos.int().argmax(dim=1) + 1
    full = torch.full_like(first_eos, new.shape[1])
    return int(torch.where(is_eos.any(dim=1), first_eos, full).sum())


def _record_output(
    call: Call, model: Any, prompt: _Prompt, result: Any, kwargs: Mapping[str, Any]
) -> None:
    sequences = getattr(result, "sequences", result)
    if getattr(sequences, "ndim", 0) != 2:
        call.set_tokens(prompt.input_tokens, None)
        return
    output = _new_tokens(sequences, prompt.output_offset, _eos_ids(model, kwargs))
    call.set_tokens(prompt.input_tokens, output)


def _record_request(call: Call, model: Any, kwargs: Mapping[str, Any]) -> None:
    _record_model(call.attrs, model)
    max_new = kwargs.get("max_new_tokens")
    if isinstance(max_new, int):
        call.attrs[A.GEN_AI_REQUEST_MAX_TOKENS] = max_new
    temperature = kwargs.get("temperature")
    if isinstance(temperature, (int, float)) and kwargs.get("do_sample"):
        call.attrs[A.GEN_AI_REQUEST_TEMPERATURE] = float(temperature)


class _TimedStreamer(_Proxy):
    """The caller's streamer, noting when generated tokens reach it."""

    def __init__(self, streamer: Any, call: Call) -> None:
        super().__init__(streamer)
        self._self_tick = call.ticker()
        self._self_prompt_seen = False

    def put(self, value: Any) -> Any:
        # generate() first puts the prompt (or the decoder's start token): not output.
        if self._self_prompt_seen:
            self._self_tick(perf_counter_ns())
        else:
            self._self_prompt_seen = True
        return self.__wrapped__.put(value)


def _model_name(model: Any) -> str:
    name = getattr(model, "name_or_path", None)
    if isinstance(name, str) and name:
        return name
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return str(model_type or type(model).__name__)


def _generate_wrapper(tools: RecordingTools) -> Callable[..., Any]:
    def traced_generate(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        if _GENERATING.get() or not is_instrumentation_enabled():
            return wrapped(*args, **kwargs)
        name = _model_name(instance)
        prompt = guard(_prompt, instance, args, kwargs) or _Prompt(None, 0)
        call = Call(
            tools, f"{A.OP_TEXT_COMPLETION} {name}", SpanKind.INTERNAL,
            _base_attrs(A.OP_TEXT_COMPLETION, name),
        )  # fmt: skip
        if call.recording:
            guard(_record_request, call, instance, kwargs)
        if kwargs.get("streamer") is not None:
            kwargs = {**kwargs, "streamer": _TimedStreamer(kwargs["streamer"], call)}
        generating = _GENERATING.set(True)
        try:
            with call:
                result = wrapped(*args, **kwargs)
        finally:
            _GENERATING.reset(generating)
        call.end(_record_output, instance, prompt, result, kwargs)
        return result

    return traced_generate


class TransformersInstrumentor(BaseInstrumentor):
    """Instruments ``PreTrainedModel.from_pretrained`` and ``GenerationMixin.generate``.

    ``instrument()`` accepts ``tracer_provider`` and ``meter_provider``.
    """

    _patcher: Patcher | None = None

    def instrumentation_dependencies(self) -> Collection[str]:
        return ("transformers >= 4.40",)

    def _instrument(self, **kwargs: Any) -> None:
        tools = recording_tools(__name__, kwargs)
        self._patcher = Patcher()
        self._patcher.add(
            "transformers.modeling_utils",
            "PreTrainedModel.from_pretrained",
            _load_wrapper(tools),
        )
        self._patcher.add(
            "transformers.generation.utils",
            "GenerationMixin.generate",
            _generate_wrapper(tools),
        )
        self._patcher.apply()

    def _uninstrument(self, **kwargs: Any) -> None:
        if self._patcher is not None:
            self._patcher.remove()
