"""Pick the client class for a provider's wire format."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cfn.providers.clients.base import ProviderClient
from cfn.providers.routes import ProviderSpec

if TYPE_CHECKING:
    from cfn.system.http11 import Proxies


def make_client(
    spec: ProviderSpec, timeout: float, proxies: Proxies | None = None
) -> ProviderClient:
    # Imported here: the HTTP clients load ssl and zlib, and a process that only
    # routes, or only runs offline, should not pay it.
    if spec.kind == "offline":
        from cfn.providers.clients.offline import OfflineClient

        return OfflineClient()
    if spec.kind == "anthropic":
        from cfn.providers.clients.anthropic_http import AnthropicClient

        return AnthropicClient(spec, timeout, proxies)
    from cfn.providers.clients.openai_http import OpenAICompatClient

    return OpenAICompatClient(spec, timeout, proxies)
