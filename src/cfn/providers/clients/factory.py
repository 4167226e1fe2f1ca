"""Pick the client class for a provider's wire format."""

from __future__ import annotations

from cfn.providers.clients.base import ProviderClient
from cfn.providers.routes import ProviderSpec


def make_client(spec: ProviderSpec, timeout: float) -> ProviderClient:
    # Imported here: loading httpx costs tens of ms, and a process that only
    # routes, or only runs offline, should not pay it.
    if spec.kind == "offline":
        from cfn.providers.clients.offline import OfflineClient

        return OfflineClient()
    if spec.kind == "anthropic":
        from cfn.providers.clients.anthropic_http import AnthropicClient

        return AnthropicClient(spec, timeout)
    from cfn.providers.clients.openai_http import OpenAICompatClient

    return OpenAICompatClient(spec, timeout)
