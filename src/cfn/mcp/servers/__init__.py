"""The built-in MCP servers; each module has ``build(settings, common) -> ToolServer``."""
