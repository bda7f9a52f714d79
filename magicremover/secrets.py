"""Hiding secrets before anything is written or logged: credentials and query values in URLs, values under
secret-looking keys (password, token, api_key, …)."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

HIDDEN = "***"
_SECRET_WORDS = {"password", "passwd", "secret", "token", "credential", "credentials", "auth", "apikey"}
_SECRET_PAIRS = {("api", "key"), ("access", "key"), ("private", "key")}


def secret_key(key: str) -> bool:
    """Whether a config key names a secret: one of its words is password, token, secret, … (``tokenizer`` is not)."""
    words = re.split(r"[^a-z0-9]+", str(key).lower())
    return bool(_SECRET_WORDS & set(words)) or any(pair in _SECRET_PAIRS for pair in zip(words, words[1:]))


def redact_url(text: str) -> str:
    """``text`` with a URL's user info and every query value hidden; other strings unchanged."""
    parts = urlsplit(text)
    if not parts.scheme or not parts.netloc:
        return text
    netloc = f"{HIDDEN}@{parts.netloc.rsplit('@', 1)[1]}" if "@" in parts.netloc else parts.netloc
    query = "&".join(f"{pair.split('=', 1)[0]}={HIDDEN}" if "=" in pair else pair for pair in parts.query.split("&"))
    return urlunsplit((parts.scheme, netloc, parts.path, query if parts.query else "", parts.fragment))


def redact(value):
    """A copy of a plain config (dicts, lists, scalars): values under secret-looking keys (password, token, api_key,
    …) and credentials or query values in URLs replaced by ``***``."""
    if isinstance(value, dict):
        return {key: HIDDEN if secret_key(key) and item is not None else redact(item) for key, item in value.items()}
    if isinstance(value, list):
        return [redact(item) for item in value]
    return redact_url(value) if isinstance(value, str) else value
