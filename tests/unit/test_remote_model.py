"""Which model a remote server (``--vllm-url``) is asked for: the first it lists, or the one the run
names with ``--base-model``/``--compressed-model``, checked against its list.

A local HTTP server stands in for /v1/models (a test double: a real vLLM always lists the model it
serves, and what is tested here is an empty list and a list without the named model, which some
OpenAI-compatible servers give, e.g. ``transformers serve`` listing only its hub cache).
"""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from pytest_vllm.errors import UsageError
from pytest_vllm.server.handle import connect_remote
from pytest_vllm.server.replicas import connect_remote_replicas


@contextmanager
def models_server(ids: list[str]) -> Iterator[str]:
    body = json.dumps({"object": "list", "data": [{"id": i, "object": "model"} for i in ids]}).encode()

    class Models(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            self.send_response(200 if self.path == "/v1/models" else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Models)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def test_without_a_name_the_first_listed_model_is_asked_for() -> None:
    with models_server(["a", "b"]) as url:
        assert connect_remote("base", url, "k").model == "a"


def test_a_named_model_must_be_one_the_server_lists() -> None:
    with models_server(["a", "b"]) as url:
        assert connect_remote("base", url, "k", "b").model == "b"
        with pytest.raises(UsageError, match=r"serves 'a', 'b', not 'c' \(from --base-model\)"):
            connect_remote("base", url, "k", "c")


def test_an_empty_list_needs_a_name_and_takes_it() -> None:
    with models_server([]) as url:
        with pytest.raises(UsageError, match="lists no model; name the model its requests ask for with "
                                             "--compressed-model NAME"):
            connect_remote("compressed", url, "k")
        assert connect_remote("compressed", url, "k", "smol").model == "smol"


def test_every_replica_is_checked_against_the_name() -> None:
    with models_server(["smol"]) as first, models_server(["other"]) as second:
        with pytest.raises(UsageError, match="not 'smol'"):
            connect_remote_replicas("base", [first, second], "k", "smol")
