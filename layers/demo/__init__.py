"""Embedded demo services that run on loopback (no internet needed)."""
