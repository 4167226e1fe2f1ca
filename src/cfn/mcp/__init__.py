"""MCP integration (seed: "MCP Integration"): signed tokens, skill routing, four tool
servers speaking MCP over streamable HTTP and the seed's ``POST /execute``, an
authenticating gateway in front of them, and a launcher that runs them as
processes under the seed's memory and CPU limits.
"""

from cfn.mcp.routing import SERVERS, ServerSpec, skill_mapping
from cfn.mcp.tokens import Claims, TokenAuthority

__all__ = ["SERVERS", "Claims", "ServerSpec", "TokenAuthority", "skill_mapping"]
