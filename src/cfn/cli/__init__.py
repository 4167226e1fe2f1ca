"""The ``cfn`` command line: thin Typer commands over the package."""
