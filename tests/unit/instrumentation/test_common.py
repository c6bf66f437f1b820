"""The shared parts: deferred patching and the never-raise guard."""

from __future__ import annotations

import logging
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import wrapt
from openai.types import CreateEmbeddingResponse
from openai.types.chat import ChatCompletion
from opentelemetry import context as otel_context
from opentelemetry.instrumentation.utils import suppress_instrumentation

from tokentrace import attributes as A
from tokentrace.instrumentation.caches import Server, Servers
from tokentrace.instrumentation.content import capture_content_default
from tokentrace.instrumentation.fields import field, fields
from tokentrace.instrumentation.guard import guard
from tokentrace.instrumentation.patching import BaseInstrumentor, Patcher
from tokentrace.instrumentation.suppression import enabled_context
from tokentrace.instrumentation._metrics import (
    DURATION_BUCKETS,
    TIME_PER_OUTPUT_TOKEN_BUCKETS,
    TIME_TO_FIRST_TOKEN_BUCKETS,
    TOKEN_BUCKETS,
)

MODULE = "tt_patch_target"


@pytest.fixture
def target_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    (tmp_path / f"{MODULE}.py").write_text(
        textwrap.dedent(
            """
            class Model:
                @classmethod
                def load(cls, name):
                    return (cls.__name__, name)

                def run(self, x):
                    return x * 2

            class Child(Model):
                pass
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop(MODULE, None)


def _tagging(tag: str) -> Any:
    def wrapper(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return (tag, wrapped(*args, **kwargs))

    return wrapper


@pytest.mark.usefixtures("target_source")
def test_patcher_wraps_on_import_and_restores_the_originals() -> None:
    patcher = Patcher()
    patcher.add(MODULE, "Model.load", _tagging("load"))
    patcher.add(MODULE, "Model.run", _tagging("run"))
    patcher.apply()
    assert MODULE not in sys.modules  # nothing imported yet
    import tt_patch_target as mod  # type: ignore[import-not-found]

    originals = dict(vars(mod.Model))
    assert isinstance(originals["load"], wrapt.FunctionWrapper)
    assert mod.Child.load("x") == ("load", ("Child", "x"))  # still a classmethod of the subclass
    assert mod.Model().run(2) == ("run", 4)
    patcher.remove()

    assert isinstance(vars(mod.Model)["load"], classmethod)
    assert mod.Child.load("x") == ("Child", "x")
    assert mod.Model().run(2) == 4


@pytest.mark.usefixtures("target_source")
def test_patcher_removed_before_import_wraps_nothing() -> None:
    patcher = Patcher()
    patcher.add(MODULE, "Model.run", _tagging("run"))
    patcher.apply()
    patcher.remove()
    patcher.apply()
    patcher.remove()  # two disarmed hooks now wait for the import
    import tt_patch_target as mod

    assert mod.Model().run(2) == 4


@pytest.mark.usefixtures("target_source")
def test_patcher_skips_a_missing_target() -> None:
    patcher = Patcher()
    patcher.add(MODULE, "Model.gone", _tagging("x"))
    patcher.add(MODULE, "Missing.run", _tagging("x"))
    patcher.apply()
    import tt_patch_target as mod

    assert mod.Model().run(2) == 4
    patcher.remove()


class _Foreign(BaseInstrumentor):  # type: ignore[misc]
    """A real instrumentor (another package's, say) that wraps ``Model.run`` after us."""

    target: Any = None

    def instrumentation_dependencies(self) -> tuple[str, ...]:
        return ()

    def _instrument(self, **kwargs: Any) -> None:
        wrapt.wrap_function_wrapper(self.target, "run", _tagging("foreign"))

    def _uninstrument(self, **kwargs: Any) -> None:
        pass


class _Unrelated(_Foreign):  # type: ignore[misc]
    def _instrument(self, **kwargs: Any) -> None:
        pass


@pytest.mark.usefixtures("target_source")
@pytest.mark.parametrize("outermost", [True, False])
def test_an_outermost_patcher_goes_back_on_top_after_another_instrument(outermost: bool) -> None:
    import tt_patch_target as mod

    patcher = Patcher(outermost=outermost)
    patcher.add(MODULE, "Model.run", _tagging("ours"))
    patcher.apply()
    _Foreign.target = mod.Model
    foreign = _Foreign()
    foreign.instrument()
    try:
        if outermost:
            assert mod.Model().run(2) == ("ours", ("foreign", 4))  # ours once, on top
        else:
            assert mod.Model().run(2) == ("foreign", ("ours", 4))  # whoever came last
        _Unrelated().instrument()  # any later instrument() leaves the chain as it is
        _Unrelated().uninstrument()
        if outermost:
            assert mod.Model().run(2) == ("ours", ("foreign", 4))
    finally:
        foreign.uninstrument()
        patcher.remove()
    # Ours is taken off wherever it was; the foreign wrapper stays, on the original.
    assert mod.Model().run(2) == ("foreign", 4)
    assert not isinstance(vars(mod.Model)["run"].__wrapped__, wrapt.FunctionWrapper)


@pytest.mark.usefixtures("target_source")
def test_patcher_takes_its_wrapper_from_under_another() -> None:
    import tt_patch_target as mod

    patcher = Patcher()
    patcher.add(MODULE, "Model.run", _tagging("ours"))
    patcher.apply()
    wrapt.wrap_function_wrapper(mod.Model, "run", _tagging("over"))
    assert mod.Model().run(2) == ("over", ("ours", 4))
    patcher.remove()

    assert mod.Model().run(2) == ("over", 4)
    over = vars(mod.Model)["run"]
    assert isinstance(over, wrapt.FunctionWrapper)
    assert not isinstance(over.__wrapped__, wrapt.FunctionWrapper)


def test_guard_swallows_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> int:
        raise RuntimeError("telemetry bug")

    with caplog.at_level(logging.DEBUG, logger="tokentrace.instrumentation.guard"):
        assert guard(broken) is None
    assert "broken" in caplog.text
    assert guard(lambda a, b=0: a + b, 1, b=2) == 3


def test_capture_content_only_for_true(monkeypatch: pytest.MonkeyPatch) -> None:
    for value, expected in (
        ("true", True),
        ("TRUE", True),
        ("1", False),
        ("", False),
        ("yes", False),
    ):
        monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", value)
        assert capture_content_default() is expected
    monkeypatch.delenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT")
    assert capture_content_default() is False


def test_bucket_boundaries_are_the_conventions() -> None:
    assert TOKEN_BUCKETS[0] == 1 and TOKEN_BUCKETS[-1] == 67108864 and len(TOKEN_BUCKETS) == 14
    assert DURATION_BUCKETS == tuple(0.01 * 2**i for i in range(14))
    assert (
        TIME_PER_OUTPUT_TOKEN_BUCKETS[:3] == (0.01, 0.025, 0.05)
        and TIME_PER_OUTPUT_TOKEN_BUCKETS[-1] == 2.5
    )
    assert TIME_TO_FIRST_TOKEN_BUCKETS[0] == 0.001 and TIME_TO_FIRST_TOKEN_BUCKETS[-1] == 10.0


def test_field_reads_like_getattr_with_a_default() -> None:
    completion = ChatCompletion.model_validate(
        {
            "id": "c1", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [], "timings": {"predicted_n": 3},
        }
    )  # fmt: skip
    embedding = CreateEmbeddingResponse.model_validate(
        {"object": "list", "model": "m", "data": [], "usage": {"prompt_tokens": 2, "total_tokens": 2}}
    )

    class Plain:
        def __init__(self) -> None:
            self.here = 1

        @property
        def computed(self) -> int:
            return 2

    for obj, name in (
        (completion, "id"), (completion, "usage"), (completion, "timings"), (completion, "nope"),
        (embedding, "id"), (embedding, "choices"), (embedding.usage, "completion_tokens"),
        (embedding.usage, "prompt_tokens"), (Plain(), "here"), (Plain(), "computed"),
        (Plain(), "nope"), (None, "x"), ({"a": 1}, "a"),
    ):  # fmt: skip
        assert field(obj, name) == getattr(obj, name, None), (obj, name)
        assert fields(obj)(name) == field(obj, name), (obj, name)


def test_shapes_are_built_once_and_keep_their_attributes() -> None:
    urls = [object(), object()]
    computed: list[object] = []

    def compute(url: object) -> Server:
        computed.append(url)
        attrs = {A.GEN_AI_PROVIDER_NAME: "vllm", A.SERVER_ADDRESS: "h", A.SERVER_PORT: 8000}
        return Server("vllm", attrs)

    servers = Servers(compute)
    server = servers(urls[0])
    assert servers(urls[0]) is server and computed == [urls[0]]
    shape = server.shape("chat", "m", False)
    assert server.shape("chat", "m", False) is shape
    assert shape.name == "chat m"
    assert list(shape.attrs.items()) == [
        (A.GEN_AI_OPERATION_NAME, "chat"), (A.GEN_AI_PROVIDER_NAME, "vllm"),
        (A.GEN_AI_REQUEST_MODEL, "m"), (A.SERVER_ADDRESS, "h"), (A.SERVER_PORT, 8000),
    ]  # fmt: skip
    assert shape.metric_attrs is shape.attrs
    stream = server.shape("chat", "m", True)
    assert dict(stream.attrs) == {**shape.attrs, A.GEN_AI_REQUEST_STREAM: True}
    assert dict(stream.metric_attrs) == dict(shape.metric_attrs)
    attrs, (input_attrs, output_attrs) = shape.for_response_model("m-2")
    assert dict(attrs) == {**shape.metric_attrs, A.GEN_AI_RESPONSE_MODEL: "m-2"}
    assert dict(input_attrs) == {**attrs, A.GEN_AI_TOKEN_TYPE: "input"}
    assert dict(output_attrs) == {**attrs, A.GEN_AI_TOKEN_TYPE: "output"}
    assert shape.for_response_model("m-2")[0] is attrs
    assert A.GEN_AI_RESPONSE_MODEL not in shape.metric_attrs  # never mutated
    for i in range(1000):  # bounded: many models do not grow the caches without end
        server.shape("chat", f"model-{i}", False)
        shape.for_response_model(f"r-{i}")
    assert len(server._shapes) <= Server._MAX
    assert len(shape._responses) <= shape._MAX


def test_enabled_context_is_none_when_suppressed() -> None:
    assert enabled_context() is otel_context.get_current()
    with suppress_instrumentation():
        assert enabled_context() is None
    token = otel_context.attach(otel_context.set_value("suppress_instrumentation", True))
    try:
        assert enabled_context() is None  # the plain key older code sets
    finally:
        otel_context.detach(token)
