"""The package version, in one place (read by the root package, the CLI and the portal)."""

__version__ = "0.1.0"
