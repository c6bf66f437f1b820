"""Small local HTTP servers that answer like Ollama and OpenAI-compatible servers.

They listen on 127.0.0.1 on a random port, in a thread of the test process, and
speak the wire formats the real client libraries parse:

* :class:`FakeOllama` — ``/api/generate``, ``/api/chat``, ``/api/embed``,
  ``/api/embeddings``. Non-streamed answers are one JSON object; streams are NDJSON
  (``application/x-ndjson``) whose timing fields appear only on the final
  ``done`` chunk. As Ollama's Go structs tag them ``omitempty``, a timing or count
  that is zero (or ``None`` in the script) is left out of the JSON. An unknown model
  gets a 404 ``{"error": "model '…' not found"}``.
* :class:`FakeOpenAI` — ``/v1/chat/completions``, ``/v1/completions``,
  ``/v1/embeddings``. Streams are server-sent events ending in ``data: [DONE]``,
  with a final usage chunk (empty ``choices``) only when the request sets
  ``stream_options.include_usage``. An unknown model gets OpenAI's 404 error body.

What a server answers is a :class:`Script`, per model; each request it received is
kept in ``requests`` (path and JSON body) for assertions.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Script:
    """What the fake server answers for one model (durations in nanoseconds)."""

    tokens: list[str] = field(default_factory=lambda: ["Hello", " there", "!"])
    load_ns: int = 0
    prompt_eval_count: int | None = 7
    prompt_eval_ns: int = 0
    eval_ns: int = 0
    total_ns: int = 0
    done_reason: str = "stop"
    chunk_delay_s: float = 0.0
    first_chunk_delay_s: float = 0.0
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None
    llamacpp_timings: dict[str, Any] | None = None
    embedding_dims: int = 4


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that stops reading a stream early (the abandoned-stream tests do)
        # closes the socket under the handler: expected, not worth a traceback.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class FakeServer:
    """Base: a threaded HTTP server on 127.0.0.1 with per-model scripts."""

    def __init__(self, scripts: dict[str, Script] | None = None) -> None:
        self.scripts: dict[str, Script] = scripts if scripts is not None else {}
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self._httpd = _Server(("127.0.0.1", 0), self._handler_class())
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def answer(self, handler: _Handler, path: str, body: dict[str, Any]) -> None:
        raise NotImplementedError

    def _handler_class(self) -> type[_Handler]:
        server = self

        class Handler(_Handler):
            owner = server

        return Handler


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    owner: FakeServer

    def setup(self) -> None:
        super().setup()
        # Without this, a response written in pieces waits ~40 ms for a delayed ACK.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        self.owner.requests.append((self.path, body))
        self.owner.answer(self, self.path, body)

    def send_json(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def send_stream(self, content_type: str, pieces: Iterator[bytes]) -> None:
        """A chunked HTTP/1.1 response, one chunk per piece, flushed as it comes."""
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for piece in pieces:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


def _paced(items: list[bytes], script: Script) -> Iterator[bytes]:
    for index, item in enumerate(items):
        delay = script.first_chunk_delay_s if index == 0 else script.chunk_delay_s
        if delay:
            time.sleep(delay)
        yield item


# --- Ollama ----------------------------------------------------------------------


class FakeOllama(FakeServer):
    """Answers like ``ollama serve`` (native API)."""

    created_at = "2026-09-01T12:00:00.000000Z"

    def answer(self, handler: _Handler, path: str, body: dict[str, Any]) -> None:
        model = body.get("model", "")
        script = self.scripts.get(model)
        if script is None:
            handler.send_json(404, {"error": f"model '{model}' not found"})
            return
        if path == "/api/embed":
            handler.send_json(200, self._embed(model, body, script))
        elif path == "/api/embeddings":
            handler.send_json(200, {"embedding": [0.5] * script.embedding_dims})
        elif path in ("/api/generate", "/api/chat"):
            chat = path == "/api/chat"
            if body.get("stream", True):
                lines = [json.dumps(c).encode() + b"\n" for c in self._chunks(model, script, chat)]
                handler.send_stream("application/x-ndjson", _paced(lines, script))
            else:
                handler.send_json(200, self._final(model, script, chat, "".join(script.tokens)))
        else:
            handler.send_json(404, {"error": "not found"})

    def _metrics(self, script: Script) -> dict[str, Any]:
        fields = {
            "total_duration": script.total_ns,
            "load_duration": script.load_ns,
            "prompt_eval_count": script.prompt_eval_count,
            "prompt_eval_duration": script.prompt_eval_ns,
            "eval_count": len(script.tokens),
            "eval_duration": script.eval_ns,
        }
        return {key: value for key, value in fields.items() if value}  # omitempty

    def _final(self, model: str, script: Script, chat: bool, text: str) -> dict[str, Any]:
        out: dict[str, Any] = {"model": model, "created_at": self.created_at}
        out.update(self._content(chat, text))
        out.update({"done": True, "done_reason": script.done_reason})
        out.update(self._metrics(script))
        return out

    @staticmethod
    def _content(chat: bool, text: str) -> dict[str, Any]:
        if chat:
            return {"message": {"role": "assistant", "content": text}}
        return {"response": text}

    def _chunks(self, model: str, script: Script, chat: bool) -> Iterator[dict[str, Any]]:
        for token in script.tokens:
            chunk = {"model": model, "created_at": self.created_at, **self._content(chat, token)}
            yield {**chunk, "done": False}
        yield self._final(model, script, chat, "")

    def _embed(self, model: str, body: dict[str, Any], script: Script) -> dict[str, Any]:
        inputs = body.get("input")
        count = len(inputs) if isinstance(inputs, list) else 1
        out: dict[str, Any] = {
            "model": model,
            "embeddings": [[0.5] * script.embedding_dims] * count,
        }
        metrics = self._metrics(script)
        metrics.pop("eval_count", None)
        metrics.pop("eval_duration", None)
        out.update(metrics)
        return out


# --- OpenAI-compatible ------------------------------------------------------------


class FakeOpenAI(FakeServer):
    """Answers like an OpenAI-compatible server (``/v1`` API)."""

    created = 1_788_000_000

    def answer(self, handler: _Handler, path: str, body: dict[str, Any]) -> None:
        model = body.get("model", "")
        script = self.scripts.get(model)
        if script is None:
            error = {
                "message": f"The model `{model}` does not exist or you do not have access to it.",
                "type": "invalid_request_error",
                "param": None,
                "code": "model_not_found",
            }
            handler.send_json(404, {"error": error})
            return
        if path == "/v1/embeddings":
            handler.send_json(200, self._embeddings(model, body, script))
        elif path in ("/v1/chat/completions", "/v1/completions"):
            chat = path == "/v1/chat/completions"
            if body.get("stream"):
                events = [
                    f"data: {json.dumps(e)}\n\n".encode()
                    for e in self._events(model, body, script, chat)
                ]
                events.append(b"data: [DONE]\n\n")
                handler.send_stream("text/event-stream", _paced(events, script))
            else:
                handler.send_json(200, self._completion(model, body, script, chat))
        else:
            handler.send_json(
                404, {"error": {"message": "not found", "type": "invalid_request_error"}}
            )

    def _usage(self, body: dict[str, Any], script: Script) -> dict[str, Any]:
        prompt = script.prompt_eval_count or 0
        usage: dict[str, Any] = {
            "prompt_tokens": prompt,
            "completion_tokens": len(script.tokens),
            "total_tokens": prompt + len(script.tokens),
        }
        if script.cached_tokens is not None:
            usage["prompt_tokens_details"] = {"cached_tokens": script.cached_tokens}
        if script.reasoning_tokens is not None:
            usage["completion_tokens_details"] = {"reasoning_tokens": script.reasoning_tokens}
        return usage

    def _completion(
        self, model: str, body: dict[str, Any], script: Script, chat: bool
    ) -> dict[str, Any]:
        text = "".join(script.tokens)
        if chat:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": script.done_reason,
            }
        else:
            choice = {
                "index": 0,
                "text": text,
                "finish_reason": script.done_reason,
                "logprobs": None,
            }
        out: dict[str, Any] = {
            "id": "chatcmpl-fake1" if chat else "cmpl-fake1",
            "object": "chat.completion" if chat else "text_completion",
            "created": self.created,
            "model": model,
            "choices": [choice],
            "usage": self._usage(body, script),
        }
        if script.llamacpp_timings is not None:
            out["timings"] = script.llamacpp_timings
        return out

    def _events(
        self, model: str, body: dict[str, Any], script: Script, chat: bool
    ) -> Iterator[dict[str, Any]]:
        base = {
            "id": "chatcmpl-fake1" if chat else "cmpl-fake1",
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": self.created,
            "model": model,
        }
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        last = len(script.tokens) - 1
        for index, token in enumerate(script.tokens):
            finish = script.done_reason if index == last else None
            if chat:
                delta = (
                    {"role": "assistant", "content": token} if index == 0 else {"content": token}
                )
                choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": token, "finish_reason": finish, "logprobs": None}
            event: dict[str, Any] = {**base, "choices": [choice]}
            if include_usage:
                event["usage"] = None
            if index == last and script.llamacpp_timings is not None:
                event["timings"] = script.llamacpp_timings
            yield event
        if include_usage:
            yield {**base, "choices": [], "usage": self._usage(body, script)}

    def _embeddings(self, model: str, body: dict[str, Any], script: Script) -> dict[str, Any]:
        inputs = body.get("input")
        count = len(inputs) if isinstance(inputs, list) else 1
        prompt = script.prompt_eval_count or 0
        return {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": [0.5] * script.embedding_dims}
                for i in range(count)
            ],
            "model": model,
            "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
        }
