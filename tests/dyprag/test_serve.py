"""`hyco-rag serve`: the JSON endpoint answers like the runtime and rejects bad input."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import pytest

from hyco_rag.cli.serve import MODES as CLI_MODES
from hyco_rag.cli.serve import build_server, parse_request
from hyco_rag.dyprag import MODES, ParameterTranslator, ParametricRAG, TranslatorConfig
from hyco_rag.generation import ChatGenerator, GenerationConfig


@pytest.fixture(scope="module")
def server(tiny_llama):
    model, tokenizer = tiny_llama
    translator = ParameterTranslator(TranslatorConfig.for_model(model, hidden_dim=8))
    rag = ParametricRAG(ChatGenerator(model, tokenizer, GenerationConfig(max_new_tokens=3)), translator, mode="dyprag")
    server = build_server(rag, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield rag, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def call(url: str, payload: object | None = None, raw: bytes | None = None) -> tuple[int, dict]:
    data = raw if raw is not None else (json.dumps(payload).encode() if payload is not None else None)
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_generate_matches_the_runtime(server):
    rag, base = server
    body = {"question": "Who wrote it?", "documents": ["Ada Lovelace wrote the first program."], "mode": "combine"}
    status, result = call(f"{base}/generate", body)
    assert status == 200
    expected = rag.answer(body["question"], body["documents"], mode="combine")
    assert result["answer"] == expected.text and result["mode"] == "combine"
    assert result["delta_rank"] == 2 and result["prompt_tokens"] == expected.prompt_tokens
    status, result = call(f"{base}/generate", {"question": "Who?", "documents": [], "max_new_tokens": 1})
    assert status == 200 and result["mode"] == "dyprag" and result["completion_tokens"] <= 1


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"documents": []}, "question"),
        ({"question": "q", "documents": "text"}, "documents"),
        ({"question": "q", "mode": "magic"}, "mode must be one of"),
        ({"question": "q", "max_new_tokens": 0}, "max_new_tokens"),
        ({"question": "q", "temperature": 2}, "unknown fields"),
    ],
)
def test_bad_requests_get_400_with_the_reason(server, payload, message):
    _, base = server
    status, result = call(f"{base}/generate", payload)
    assert status == 400 and message in result["error"]


def test_health_not_json_and_unknown_paths(server):
    _, base = server
    status, result = call(f"{base}/health")
    assert status == 200 and result["modes"] == list(MODES) and result["default_mode"] == "dyprag"
    assert call(f"{base}/generate", raw=b"{not json")[0] == 400
    assert call(f"{base}/nothing", {"question": "q"})[0] == 404
    assert CLI_MODES == MODES
    with pytest.raises(ValueError, match="JSON object"):
        parse_request([1, 2])
