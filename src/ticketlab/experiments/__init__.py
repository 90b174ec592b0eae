"""Experiments layer (see docs/ARCHITECTURE.md)."""
