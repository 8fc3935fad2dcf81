"""Encryption at rest for secrets (API keys, tokens) stored in the database.

Fernet (AES-128-CBC + HMAC-SHA256) from `cryptography`. Keys come from
TOPDOG_ENCRYPTION_KEYS (comma-separated; the first encrypts, all decrypt, so keys can be
rotated), or are derived from SECRET_KEY when that is unset.
"""

import base64
import hashlib
from functools import cache
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import models

PREFIX = "enc1:"


@cache
def _fernet() -> MultiFernet:
    secrets = settings.TOPDOG_ENCRYPTION_KEYS or [settings.SECRET_KEY]
    return MultiFernet([Fernet(_key_from(secret)) for secret in secrets])


def _key_from(secret: str) -> bytes:
    """A Fernet key: the secret itself if it is one, else derived from it."""
    try:
        if len(base64.urlsafe_b64decode(secret.encode())) == 32:
            return secret.encode()
    except (ValueError, TypeError):
        pass
    digest = hashlib.sha256(b"topdog-encryption-v1:" + secret.encode()).digest()
    return base64.urlsafe_b64encode(digest)


def encrypt(plaintext: str) -> str:
    return PREFIX + _fernet().encrypt(plaintext.encode()).decode()


def decrypt(ciphertext: str) -> str:
    if not ciphertext.startswith(PREFIX):
        raise ImproperlyConfigured("a stored secret is not in the expected encrypted form")
    try:
        return _fernet().decrypt(ciphertext[len(PREFIX) :].encode()).decode()
    except InvalidToken as exc:
        # Never echo the value: say what to check instead.
        raise ImproperlyConfigured(
            "a stored secret cannot be decrypted: TOPDOG_ENCRYPTION_KEYS (or SECRET_KEY) "
            "changed without keeping the old key"
        ) from exc


class EncryptedTextField(models.TextField):
    """A text column whose database value is ciphertext; Python sees the plaintext."""

    def get_prep_value(self, value: Any) -> Any:
        value = super().get_prep_value(value)
        if value in (None, ""):
            return value
        return encrypt(value)

    def from_db_value(self, value: Any, expression: Any, connection: Any) -> Any:
        if value in (None, ""):
            return value
        return decrypt(value)
