"""Model providers: one ``Provider`` per backend, chosen by ``registry.create_provider``.

This package module imports nothing: the echo and script providers must start
instantly, so each provider module imports only what it needs (no httpx for them).
Usage accounting lives in ``usage``, so a provider without HTTP never has to import the
HTTP helpers.
"""
