"""The version of demiarch-store (read by pyproject.toml and written into bundles)."""

__version__ = "0.1.0"
