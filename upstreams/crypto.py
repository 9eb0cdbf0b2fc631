"""API keys of upstreams, encrypted at rest with a key derived from SECRET_KEY.

Fernet (AES-128-CBC with HMAC-SHA256) under a 32-byte key derived by HKDF-SHA256 from SECRET_KEY with
its own ``info`` label, so the key is not reused for anything else Django signs. Changing
SECRET_KEY makes the stored keys unreadable: they must then be entered again.
"""

from __future__ import annotations

import base64

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings

INFO = b"chatsite upstream api keys v1"


class UndecryptableKey(Exception):
    """The stored key was encrypted under another SECRET_KEY (or is damaged)."""


def _fernet() -> Fernet:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=INFO).derive(
        settings.SECRET_KEY.encode()
    )
    return Fernet(base64.urlsafe_b64encode(key))


def encrypt(plain: str) -> str:
    return _fernet().encrypt(plain.encode()).decode() if plain else ""


def decrypt(token: str) -> str:
    if not token:
        return ""
    try:
        return _fernet().decrypt(token.encode()).decode()
    except InvalidToken:
        raise UndecryptableKey(
            "the upstream's API key cannot be decrypted (was SECRET_KEY changed?)"
        ) from None
