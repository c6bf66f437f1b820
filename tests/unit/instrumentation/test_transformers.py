"""``transformers`` instrumented in process, with a tiny randomly initialised GPT-2.

The model is built from a config (2 layers, 64-token vocabulary), saved to a temp
directory and loaded back: nothing is downloaded (``HF_HUB_OFFLINE=1``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from tests.unit.instrumentation.conftest import Instrument, only_span, spans_named
from tokentrace import attributes as A
from tokentrace.instrumentation.transformers import TransformersInstrumentor

VOCAB = 64
EOS = 2


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("HF_HUB_OFFLINE", "1")
        torch.manual_seed(0)
        config = transformers.GPT2Config(
            vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=2,
            bos_token_id=1, eos_token_id=EOS, pad_token_id=0,
        )  # fmt: skip
        path = tmp_path_factory.mktemp("tiny-gpt2")
        transformers.GPT2LMHeadModel(config).save_pretrained(path)
        yield path


@pytest.fixture(scope="module")
def plain_model(model_dir: Path) -> Any:
    """The model loaded without instrumentation, for reference runs."""
    return transformers.AutoModelForCausalLM.from_pretrained(model_dir)


@pytest.fixture
def tokenizer() -> Any:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit

    raw = Tokenizer(WordLevel({f"t{i}": i for i in range(VOCAB)}, unk_token="t3"))
    raw.pre_tokenizer = WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=raw, unk_token="t3", pad_token="t0"
    )


def _attrs(span: Any) -> dict[str, Any]:
    return dict(span.attributes or {})


def _new_tokens_until(sequences: Any, prompt_len: int, eos: int) -> int:
    """Reference count: new tokens of each row up to and including its first ``eos``."""
    total = 0
    for row in sequences.tolist():
        new = row[prompt_len:]
        total += new.index(eos) + 1 if eos in new else len(new)
    return total


def test_from_pretrained_is_a_load_span(
    instrument: Instrument, span_exporter: InMemorySpanExporter, model_dir: Path
) -> None:
    instrument(TransformersInstrumentor)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir)
    transformers.GPT2LMHeadModel.from_pretrained(str(model_dir), dtype=torch.bfloat16)

    assert isinstance(model, transformers.GPT2LMHeadModel)
    first, second = spans_named(
        span_exporter, f"load_model {model_dir}"
    )  # one per load, none nested
    assert len(span_exporter.get_finished_spans()) == 2
    assert first.kind is SpanKind.INTERNAL
    attrs = _attrs(first)
    load_ms = attrs.pop(A.TT_LOAD_MS)
    assert attrs == {
        A.GEN_AI_OPERATION_NAME: "load_model",
        A.GEN_AI_PROVIDER_NAME: "transformers",
        A.GEN_AI_REQUEST_MODEL: str(model_dir),
        A.TT_LOAD_SOURCE: "client",
        A.TT_MODEL_DEVICE: "cpu",
        A.TT_MODEL_DTYPE: "float32",
    }
    assert load_ms == pytest.approx((first.end_time - first.start_time) / 1e6)
    assert load_ms > 0
    assert _attrs(second)[A.TT_MODEL_DTYPE] == "bfloat16"


def test_failed_load_is_recorded_and_reraised(
    instrument: Instrument, span_exporter: InMemorySpanExporter, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    empty = tmp_path / "no-model-here"
    empty.mkdir()
    with pytest.raises(Exception) as plain:
        transformers.GPT2LMHeadModel.from_pretrained(empty)
    instrument(TransformersInstrumentor)
    with pytest.raises(Exception) as traced:
        transformers.GPT2LMHeadModel.from_pretrained(empty)

    assert type(traced.value) is type(plain.value)
    assert str(traced.value) == str(plain.value)
    span = only_span(span_exporter, f"load_model {empty}")
    assert span.status.status_code is StatusCode.ERROR
    assert _attrs(span)[A.ERROR_TYPE] == type(plain.value).__qualname__


def test_generate_counts_prompt_tokens_times_batch_and_new_tokens_only(
    instrument: Instrument, span_exporter: InMemorySpanExporter, plain_model: Any, model_dir: Path
) -> None:
    ids = torch.tensor([[5, 6, 7], [8, 9, 10]])
    reference = plain_model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False
    )
    generated = reference[:, 3:].flatten().tolist()
    never = next(t for t in range(VOCAB - 1, 0, -1) if t not in generated)  # an EOS never hit
    instrument(TransformersInstrumentor)
    out = plain_model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=4,
        do_sample=False,
        eos_token_id=never,
    )

    assert torch.equal(out, reference)  # telemetry changes nothing
    span = only_span(span_exporter, f"text_completion {model_dir}")
    assert span.kind is SpanKind.INTERNAL
    attrs = _attrs(span)
    assert attrs[A.GEN_AI_OPERATION_NAME] == "text_completion"
    assert attrs[A.GEN_AI_PROVIDER_NAME] == "transformers"
    assert attrs[A.GEN_AI_REQUEST_MAX_TOKENS] == 4
    assert attrs[A.TT_MODEL_DEVICE] == "cpu"
    assert attrs[A.GEN_AI_USAGE_INPUT_TOKENS] == 6  # 3 prompt tokens x batch of 2
    assert attrs[A.GEN_AI_USAGE_OUTPUT_TOKENS] == 8  # 4 new tokens x 2, prompt excluded
    wall_ms = (span.end_time - span.start_time) / 1e6
    assert attrs[A.TT_MS_PER_TOKEN] == pytest.approx(wall_ms / 8)
    assert attrs[A.TT_TOKEN_SOURCE] == "reported"


def test_generate_excludes_padding_and_stops_counting_at_eos(
    instrument: Instrument, span_exporter: InMemorySpanExporter, plain_model: Any
) -> None:
    ids = torch.tensor([[0, 6, 7], [8, 9, 10]])
    mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    first = plain_model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False)
    stop_at = int(first[0, 3])  # row 0's first new token, used as end-of-sequence below
    instrument(TransformersInstrumentor)
    out = plain_model.generate(
        ids,
        attention_mask=mask,
        max_new_tokens=6,
        do_sample=False,
        eos_token_id=stop_at,
        pad_token_id=0,
    )

    attrs = _attrs(span_exporter.get_finished_spans()[0])
    assert attrs[A.GEN_AI_USAGE_INPUT_TOKENS] == 5  # the padded position is not a token
    assert attrs[A.GEN_AI_USAGE_OUTPUT_TOKENS] == _new_tokens_until(out, 3, stop_at)
    assert attrs[A.GEN_AI_USAGE_OUTPUT_TOKENS] < 12


def test_text_iterator_streamer_gives_time_to_first_token(
    instrument: Instrument, span_exporter: InMemorySpanExporter, plain_model: Any, tokenizer: Any
) -> None:
    instrument(TransformersInstrumentor)
    streamer = transformers.TextIteratorStreamer(tokenizer, skip_prompt=True)
    ids = tokenizer("t5 t6 t7", return_tensors="pt")
    worker = threading.Thread(
        target=plain_model.generate,
        kwargs={
            **ids,
            "streamer": streamer,
            "max_new_tokens": 5,
            "min_new_tokens": 5,
            "do_sample": False,
        },
    )
    worker.start()
    pieces = list(streamer)
    worker.join(timeout=30)

    assert "".join(pieces).split()  # the caller's streamer still got the text
    attrs = _attrs(only_span(span_exporter, f"text_completion {plain_model.name_or_path}"))
    assert attrs[A.GEN_AI_USAGE_OUTPUT_TOKENS] == 5
    assert attrs[A.TT_STREAM_CHUNKS] == 5  # one put per new token; the prompt is not a chunk
    assert attrs[A.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK] > 0
    assert attrs[A.TT_STREAM_GENERATION_MS] >= 0
    assert attrs[A.TT_DECODE_MS_PER_TOKEN] == pytest.approx(attrs[A.TT_STREAM_GENERATION_MS] / 4)
    assert attrs[A.TT_TTFT_MS] == pytest.approx(attrs[A.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK] * 1000)


def test_generate_error_is_recorded_and_reraised_unchanged(
    instrument: Instrument, span_exporter: InMemorySpanExporter, plain_model: Any, tokenizer: Any
) -> None:
    ids = torch.tensor([[5, 6, 7]])
    streamer = transformers.TextStreamer(tokenizer)
    with pytest.raises(ValueError) as plain:  # streaming is refused with beam search
        plain_model.generate(ids, num_beams=2, streamer=streamer, max_new_tokens=2)
    instrument(TransformersInstrumentor)
    with pytest.raises(ValueError) as traced:
        plain_model.generate(ids, num_beams=2, streamer=streamer, max_new_tokens=2)

    assert str(traced.value) == str(plain.value)
    span = span_exporter.get_finished_spans()[0]
    assert span.status.status_code is StatusCode.ERROR
    assert _attrs(span)[A.ERROR_TYPE] == "ValueError"


def test_uninstrument_restores_the_originals(
    tracer_provider: Any, span_exporter: InMemorySpanExporter, plain_model: Any, model_dir: Path
) -> None:
    from transformers.generation.utils import GenerationMixin
    from transformers.modeling_utils import PreTrainedModel

    load, generate = vars(PreTrainedModel)["from_pretrained"], vars(GenerationMixin)["generate"]
    TransformersInstrumentor().instrument(tracer_provider=tracer_provider)
    assert vars(PreTrainedModel)["from_pretrained"] is not load
    TransformersInstrumentor().uninstrument()

    assert vars(PreTrainedModel)["from_pretrained"] is load
    assert isinstance(load, classmethod)
    assert vars(GenerationMixin)["generate"] is generate
    transformers.AutoModelForCausalLM.from_pretrained(model_dir)
    plain_model.generate(torch.tensor([[5, 6]]), max_new_tokens=1)
    assert span_exporter.get_finished_spans() == ()
