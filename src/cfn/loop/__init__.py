"""The CFN Loop: modes, gate, consensus, decisions and the orchestrator."""
