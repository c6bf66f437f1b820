"""Every span attribute key tokentrace reads or writes, in one place.

Two families:

* ``gen_ai.*``, ``server.*``, ``error.type`` — the OpenTelemetry GenAI semantic
  conventions (v1.41 names, which current instrumentations emit). Instrumentations
  write these; the store reads them (and their older spellings, see
  :mod:`tokentrace.dialects`).
* ``tokentrace.*`` — what tokentrace adds: the derived efficiency figures and the
  raw server timings they are derived from. Units are in the names.

The derived keys are what :class:`tokentrace.processor.TokenEfficiencySpanProcessor`
puts on every GenAI span, so any exporter (OTLP to another backend too) carries them.
"""

from __future__ import annotations

from typing import Final

# --- GenAI semantic conventions (current names) -----------------------------------
GEN_AI_OPERATION_NAME: Final = "gen_ai.operation.name"
GEN_AI_PROVIDER_NAME: Final = "gen_ai.provider.name"
GEN_AI_REQUEST_MODEL: Final = "gen_ai.request.model"
GEN_AI_RESPONSE_MODEL: Final = "gen_ai.response.model"
GEN_AI_RESPONSE_ID: Final = "gen_ai.response.id"
GEN_AI_RESPONSE_FINISH_REASONS: Final = "gen_ai.response.finish_reasons"
GEN_AI_REQUEST_STREAM: Final = "gen_ai.request.stream"
GEN_AI_REQUEST_MAX_TOKENS: Final = "gen_ai.request.max_tokens"
GEN_AI_REQUEST_TEMPERATURE: Final = "gen_ai.request.temperature"
GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK: Final = "gen_ai.response.time_to_first_chunk"  # seconds
GEN_AI_USAGE_INPUT_TOKENS: Final = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS: Final = "gen_ai.usage.output_tokens"
GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: Final = "gen_ai.usage.cache_read.input_tokens"
GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS: Final = "gen_ai.usage.cache_creation.input_tokens"
GEN_AI_USAGE_CACHE_WRITE_INPUT_TOKENS: Final = "gen_ai.usage.cache_write.input_tokens"
GEN_AI_USAGE_REASONING_OUTPUT_TOKENS: Final = "gen_ai.usage.reasoning.output_tokens"
GEN_AI_INPUT_MESSAGES: Final = "gen_ai.input.messages"
GEN_AI_OUTPUT_MESSAGES: Final = "gen_ai.output.messages"
GEN_AI_TOKEN_TYPE: Final = "gen_ai.token.type"
SERVER_ADDRESS: Final = "server.address"
SERVER_PORT: Final = "server.port"
ERROR_TYPE: Final = "error.type"
SERVICE_NAME: Final = "service.name"

# --- deprecated GenAI names and other dialects (read only) -------------------------
GEN_AI_SYSTEM: Final = "gen_ai.system"
GEN_AI_USAGE_PROMPT_TOKENS: Final = "gen_ai.usage.prompt_tokens"
GEN_AI_USAGE_COMPLETION_TOKENS: Final = "gen_ai.usage.completion_tokens"
GEN_AI_USAGE_TOTAL_TOKENS: Final = "gen_ai.usage.total_tokens"
GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS_OLD: Final = "gen_ai.usage.cache_read_input_tokens"
GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS_OLD: Final = "gen_ai.usage.cache_creation_input_tokens"
GEN_AI_USAGE_REASONING_TOKENS: Final = "gen_ai.usage.reasoning_tokens"
GEN_AI_USAGE_PROMPT_DETAILS_CACHED: Final = "gen_ai.usage.prompt_tokens_details.cached_tokens"
GEN_AI_IS_STREAMING: Final = "gen_ai.is_streaming"
GEN_AI_SERVER_TIME_TO_FIRST_TOKEN: Final = "gen_ai.server.time_to_first_token"  # OpenLIT, s
GEN_AI_CLIENT_TOKEN_USAGE: Final = "gen_ai.client.token.usage"  # OpenLIT total, as attribute
# OpenLLMetry
LLM_REQUEST_TYPE: Final = "llm.request.type"
LLM_IS_STREAMING: Final = "llm.is_streaming"
LLM_USAGE_TOTAL_TOKENS: Final = "llm.usage.total_tokens"
LLM_USAGE_PROMPT_TOKENS: Final = "llm.usage.prompt_tokens"
LLM_USAGE_COMPLETION_TOKENS: Final = "llm.usage.completion_tokens"
LLM_USAGE_REASONING_TOKENS: Final = "llm.usage.reasoning_tokens"
LLM_VENDOR: Final = "llm.vendor"
LLM_REQUEST_MODEL: Final = "llm.request.model"
LLM_RESPONSE_MODEL: Final = "llm.response.model"
# OpenInference
OPENINFERENCE_SPAN_KIND: Final = "openinference.span.kind"
LLM_TOKEN_COUNT_PROMPT: Final = "llm.token_count.prompt"
LLM_TOKEN_COUNT_COMPLETION: Final = "llm.token_count.completion"
LLM_TOKEN_COUNT_TOTAL: Final = "llm.token_count.total"
LLM_TOKEN_COUNT_CACHE_READ: Final = "llm.token_count.prompt_details.cache_read"
LLM_TOKEN_COUNT_CACHE_WRITE: Final = "llm.token_count.prompt_details.cache_write"
LLM_TOKEN_COUNT_REASONING: Final = "llm.token_count.completion_details.reasoning"
LLM_MODEL_NAME: Final = "llm.model_name"
LLM_REQUEST_MODEL_NAME: Final = "llm.request.model_name"
LLM_RESPONSE_MODEL_NAME: Final = "llm.response.model_name"
LLM_PROVIDER: Final = "llm.provider"
LLM_SYSTEM: Final = "llm.system"

# --- gen_ai.operation.name values --------------------------------------------------
OP_CHAT: Final = "chat"
OP_TEXT_COMPLETION: Final = "text_completion"
OP_EMBEDDINGS: Final = "embeddings"
OP_GENERATE_CONTENT: Final = "generate_content"
OP_LOAD_MODEL: Final = "load_model"

# --- tokentrace: derived figures (what the processor adds) -------------------------
TT_INFERENCE_MS: Final = "tokentrace.inference_ms"
TT_MS_PER_TOKEN: Final = "tokentrace.ms_per_token"
TT_PREFILL_MS_PER_TOKEN: Final = "tokentrace.prefill_ms_per_token"
TT_DECODE_MS_PER_TOKEN: Final = "tokentrace.decode_ms_per_token"
TT_TTFT_MS: Final = "tokentrace.ttft_ms"
TT_LOAD_MS: Final = "tokentrace.load_ms"
TT_TOKEN_SOURCE: Final = "tokentrace.token_source"

# --- tokentrace: raw inputs instrumentations record --------------------------------
# Server-reported timings (Ollama reports nanoseconds; kept as reported).
TT_SERVER_LOAD_NS: Final = "tokentrace.server.load_duration_ns"
TT_SERVER_PROMPT_EVAL_NS: Final = "tokentrace.server.prompt_eval_duration_ns"
TT_SERVER_EVAL_NS: Final = "tokentrace.server.eval_duration_ns"
TT_SERVER_TOTAL_NS: Final = "tokentrace.server.total_duration_ns"
# Client-side stream timing: first chunk to last chunk, in ms.
TT_STREAM_GENERATION_MS: Final = "tokentrace.stream.generation_ms"
TT_STREAM_CHUNKS: Final = "tokentrace.stream.chunks"
# True when the server omitted the prompt count because the prompt was cached.
TT_PROMPT_CACHED: Final = "tokentrace.prompt_cached"
# The keep-alive a call asked for (Ollama's keep_alive), in seconds; negative = forever.
# Recorded whether or not content is captured: it says how long the model stays loaded.
TT_REQUEST_KEEP_ALIVE_S: Final = "tokentrace.request.keep_alive_s"
# Where a span's load was measured: "server" (reported), "client" (timed in process).
TT_LOAD_SOURCE: Final = "tokentrace.load_source"
TT_MODEL_DEVICE: Final = "tokentrace.model.device"
TT_MODEL_DTYPE: Final = "tokentrace.model.dtype"
# Set by the store when a value had to be altered to be stored (truncated, NUL removed).
TT_SANITIZED: Final = "tokentrace.sanitized"

# --- tokentrace: metric attributes of the alert gauges (tokentrace.alert_metrics) ----
TT_ALERT_NAME: Final = "tokentrace.alert.name"
TT_ALERT_MODEL: Final = "tokentrace.alert.model"

# token_source values
SOURCE_REPORTED: Final = "reported"
SOURCE_ESTIMATED: Final = "estimated"
SOURCE_MISSING: Final = "missing"

DERIVED_KEYS: Final = (
    TT_INFERENCE_MS,
    TT_MS_PER_TOKEN,
    TT_PREFILL_MS_PER_TOKEN,
    TT_DECODE_MS_PER_TOKEN,
    TT_TTFT_MS,
    TT_LOAD_MS,
    TT_TOKEN_SOURCE,
)
