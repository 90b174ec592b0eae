"""Data layer (see docs/ARCHITECTURE.md)."""
