"""acp-server: an Agent Client Protocol agent server with sessions persisted to SQL."""

__version__ = "0.1.0"
