"""`hyco-rag serve`: its options, the API key from the environment, the app it builds."""

from __future__ import annotations

import logging

import httpx

from hyco_rag.cli import build_parser
from hyco_rag.cli import serve as serve_cli
from hyco_rag.server import BackgroundServer


def test_defaults_are_loopback_and_combine(monkeypatch):
    monkeypatch.delenv(serve_cli.API_KEY_ENV, raising=False)
    args = build_parser().parse_args(["serve"])
    assert (args.host, args.port, args.mode) == ("127.0.0.1", 8000, "combine")
    assert args.max_batch_size == 16 and args.max_queue == 64 and args.threads >= 1
    assert serve_cli.api_key_from(args) is None


def test_api_key_flag_or_environment(monkeypatch):
    monkeypatch.setenv(serve_cli.API_KEY_ENV, "from-env")
    assert serve_cli.api_key_from(build_parser().parse_args(["serve"])) == "from-env"
    assert serve_cli.api_key_from(build_parser().parse_args(["serve", "--api-key", "flag"])) == "flag"
    monkeypatch.setenv(serve_cli.API_KEY_ENV, "")
    assert serve_cli.api_key_from(build_parser().parse_args(["serve"])) is None


def test_built_app_uses_the_options(engine, monkeypatch, caplog):
    monkeypatch.setenv(serve_cli.API_KEY_ENV, "k")
    args = build_parser().parse_args(
        ["serve", "--host", "0.0.0.0", "--mode", "rag", "--max-tokens-limit", "8", "--max-body-bytes", "4096"]
    )
    with caplog.at_level(logging.WARNING):
        app, served = serve_cli.build_app(args, engine=engine)
    assert served is engine and "without an API key" not in caplog.text
    with (
        BackgroundServer(app) as running,
        httpx.Client(base_url=running.base_url, timeout=30, headers={"Authorization": "Bearer k"}) as http,
    ):
        assert http.get("/health").json()["default_mode"] == "rag"
        body = {"model": "default", "messages": [{"role": "user", "content": "q"}], "documents": ["d"]}
        assert http.post("/v1/chat/completions", json={**body, "max_tokens": 9}).status_code == 400
        assert http.post("/v1/chat/completions", json={**body, "max_tokens": 2}).json()["hyco"]["mode"] == "rag"
        assert http.post("/v1/chat/completions", json={**body, "documents": ["x" * 5000]}).status_code == 413
    monkeypatch.delenv(serve_cli.API_KEY_ENV)
    with caplog.at_level(logging.WARNING):
        serve_cli.build_app(args, engine=engine)
    assert "without an API key" in caplog.text
