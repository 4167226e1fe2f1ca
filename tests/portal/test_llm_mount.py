"""The LLM gateway mounted in the portal at /llm: the official Anthropic SDK calls it
with an agent's token, as Claude Code does with ANTHROPIC_BASE_URL=<portal>/llm."""

from __future__ import annotations

import httpx
import pytest

from cfn.providers.gateway.server import mint_agent_token
from tests.portal.conftest import RunningPortal, wait_for
from tests.support.lazy import LazyModule

anthropic = LazyModule("anthropic")  # imported by the worker that runs these tests
# One xdist worker runs the tests that import the SDKs (seconds of CPU each).
pytestmark = pytest.mark.xdist_group("llm-sdks")


def test_portal_serves_the_llm_gateway_under_llm(bare_portal: RunningPortal) -> None:
    settings = bare_portal.settings
    # The offline provider: no key, so nothing can reach a real model from this test.
    token = mint_agent_token(
        settings, "impl-1-1", "t-llm", provider="offline", model="cfn-offline-1"
    )
    client = anthropic.Anthropic(base_url=f"{bare_portal.url}/llm", api_key=token, max_retries=0)
    reply = client.messages.create(
        model="claude-sonnet-4-5",
        max_tokens=200,
        messages=[{"role": "user", "content": "offline-confidence: 0.77 say hello"}],
    )
    text = "".join(b.text for b in reply.content if b.type == "text")
    assert "OFFLINE" in text and '"confidence": 0.77' in text
    # A portal token is not an agent's LLM token.
    refused = httpx.post(
        f"{bare_portal.url}/llm/v1/messages",
        headers={"x-api-key": bare_portal.token()},
        json={"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]},
        timeout=10,
    )
    assert refused.status_code == 401
    assert "not meant for the LLM gateway" in refused.json()["error"]["message"]
    # The call was recorded by the gateway, as an event of its task too.
    from cfn.store.repository import Store

    with Store.open(settings) as store:
        wait_for(lambda: store.llm_calls("t-llm"), timeout=10)
        (call,) = store.llm_calls("t-llm")
        assert (call.agent_id, call.provider, call.via) == ("impl-1-1", "offline", "gateway")
