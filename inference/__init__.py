"""The model runtime: GGUF preparation, tokenizer, prompts, sampling, engine and scheduler.

Nothing here imports Django or ``conversations``: it can be read, tested and benchmarked alone.
"""
