"""One client per wire format: OpenAI chat completions, Anthropic Messages, offline."""

from cfn.providers.clients.base import ClientEvent, ClientResult, ProviderClient, Transient
from cfn.providers.clients.factory import make_client

__all__ = ["ClientEvent", "ClientResult", "ProviderClient", "Transient", "make_client"]
