"""digits: batch scoring of handwritten digits (shared settings, schema and CLI)."""

__version__ = "0.1.0"
