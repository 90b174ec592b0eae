"""Training layer (see docs/ARCHITECTURE.md)."""
