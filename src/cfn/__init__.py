"""cfn: run teams of AI coding agents through the CFN Loop."""

from cfn.errors import CfnError

__all__ = ["CfnError", "__version__"]
__version__ = "0.1.0"
