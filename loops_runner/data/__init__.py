"""Data that the package generates itself (no downloads)."""
