"""Test and offline-example helpers (a local OpenAI-compatible mock server); no third-party imports."""
