"""The package version, read by the CLI, the export's model card and the server (pyproject reads it from here)."""

__version__ = "0.1.0"
