"""cfn's LLM gateway: every agent's LLM call, through one authenticated HTTP service."""
