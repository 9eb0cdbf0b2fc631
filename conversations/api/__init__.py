"""The OpenAI-compatible HTTP API under /v1: async views, Bearer API keys, OpenAI-shaped errors."""
