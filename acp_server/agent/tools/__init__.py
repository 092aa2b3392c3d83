"""The agent's tools: the built-in "developer" set (``registry``) and per-session MCP
extensions (``mcp``). This package module imports nothing, so importing one tool module
loads only what that one needs."""
