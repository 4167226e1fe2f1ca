from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cfn.settings import Settings
from tests.support.llm_servers import LLMServer

PROVIDER_VARS = (
    "ZAI_",
    "MOONSHOT_",
    "KIMI_",
    "OPENROUTER_",
    "ANTHROPIC_",
    "MAX_",
    "GEMINI_",
    "XAI_",
    "VLLM_",
    "OLLAMA_",
    "PROVIDER_ROUTES",
    "DEFAULT_PROVIDER",
    "HIGH_COMPLEXITY_PROVIDER",
    "COST_PROVIDER",
    "OPENAI_",
)


@pytest.fixture(autouse=True)
def _no_provider_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No developer key or route reaches a test; profiles and routes come from tmp_path."""
    for name in list(os.environ):
        if name.startswith(PROVIDER_VARS):
            monkeypatch.delenv(name, raising=False)
    (tmp_path / "agents").mkdir(exist_ok=True)
    (tmp_path / "providers.json").write_text("{}")
    monkeypatch.setenv("CFN_AGENTS_DIR", str(tmp_path / "agents"))
    monkeypatch.setenv("CFN_PROVIDERS_FILE", str(tmp_path / "providers.json"))


@pytest.fixture
def llm() -> Iterator[LLMServer]:
    with LLMServer() as server:
        yield server


MakeSettings = Callable[..., Settings]


@pytest.fixture
def make_settings(tmp_path: Path) -> MakeSettings:
    """Settings with fast retries, isolated from the developer's files."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "cfn_state_dir": tmp_path / ".cfn",
            "cfn_agents_dir": tmp_path / "agents",
            "cfn_providers_file": tmp_path / "providers.json",
            "cfn_provider_backoff": 0.01,
            "cfn_provider_backoff_max": 0.05,
            "cfn_provider_timeout": 2.0,
            "cfn_provider_max_retries": 1,
        }
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
def served(make_settings: MakeSettings, llm: LLMServer) -> MakeSettings:
    """Settings whose real providers all point at the local stand-in server, with keys."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "zai_base_url": llm.openai_url,
            "zai_anthropic_base_url": llm.anthropic_url,
            "kimi_base_url": llm.openai_url,
            "openrouter_base_url": llm.openai_url,
            "gemini_base_url": llm.openai_url,
            "xai_base_url": llm.openai_url,
            "anthropic_base_url": llm.anthropic_url,
            "max_base_url": llm.anthropic_url,
            "zai_api_key": "zai-test-key",
            "moonshot_api_key": "kimi-test-key",
            "anthropic_api_key": "anthropic-test-key",
            "openrouter_api_key": "openrouter-test-key",
        }
        values.update(overrides)
        return make_settings(**values)

    return make
