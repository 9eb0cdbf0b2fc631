"""Upstream inference servers: OpenAI-compatible engines (vLLM, llama.cpp's server, Ollama, TGI,
another chatsite) that serve models beside the embedded one.

Pure asyncio + httpx, no Django: ``connection`` (one server: its limits, queue, health and HTTP
client), ``pool`` (the replicas of each model id, least busy healthy first, one retry before any
token), ``relay`` (one call's stream fed to the jobs the runner follows and to the API's client).
"""
