"""The on-disk protocol (code map to be written)."""
