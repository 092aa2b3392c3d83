"""Benchmarks of acp-server: ``python -m benchmarks`` (see README.md).

Kept empty on purpose: ``python -m benchmarks.floor_agent`` imports this package, and
the floor's cold start must not pay for anything but the SDK.
"""
