"""One redaction rule for everything pytest-vllm prints or writes.

A CI log, a results.json attached to a pull request or a baseline committed to git must never
carry an API key or a token. Three things are hidden, wherever they appear:

* text values of flags and environment variables whose *name* says they are secret (a name
  segment such as ``token``, ``key``, ``secret``, ``password``: ``hf_token``, ``api_key``,
  ``HF_TOKEN``, ``WANDB_API_KEY``; not ``max_num_batched_tokens`` or ``tokenizer``, and never a
  number or a switch);
* ``Authorization: Bearer ...`` headers and credentials in URLs (``https://user:pass@host``);
* every value registered as a secret in this process (the run's API key, the values of secret
  flags and env of the servers it booted), in any text: a log tail, a vLLM error line.

Redacted values read ``***``. ``EMPTY`` (vLLM's "no key") is not a secret.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from typing import Any

MASK = "***"
# Name segments (split on _ - . and case changes) that make a flag or variable secret.
_SECRET_SEGMENTS = ("token", "key", "secret", "password", "passwd", "credential", "credentials", "apikey", "auth")
_SEGMENT_SPLIT = re.compile(r"[_\-.\s]+|(?<=[a-z0-9])(?=[A-Z])")
_BEARER = re.compile(r"(?i)\b(bearer\s+)([^\s'\"]+)")
_URL_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s:@'\"]+(?::[^/\s@'\"]*)?@")
# Values too short to be secrets would mask unrelated text (a key of "1" would hide every "1").
_MIN_SECRET_LENGTH = 4
NOT_SECRET = frozenset({"", "EMPTY", "none", "None", "null", "true", "false"})

_known: set[str] = set()
_lock = threading.Lock()


def is_secret_name(name: str) -> bool:
    """Whether a flag or environment variable named ``name`` holds a secret."""
    segments = [s.lower() for s in _SEGMENT_SPLIT.split(name.lstrip("-")) if s]
    return any(s in _SECRET_SEGMENTS for s in segments)


def register(value: Any) -> None:
    """Treat ``value`` as a secret in everything redacted from now on (this process)."""
    text = str(value) if value is not None else ""
    if text not in NOT_SECRET and len(text) >= _MIN_SECRET_LENGTH:
        with _lock:
            _known.add(text)


def is_secret_entry(name: str, value: Any) -> bool:
    """Whether a flag or variable holds a secret: a secret name with a text value. Numbers and
    switches never are (``long_prefill_token_threshold=128``, ``return_tokens_as_token_ids=True``)."""
    if not isinstance(value, str) or not is_secret_name(name) or value in NOT_SECRET:
        return False
    return not re.fullmatch(r"[-+]?[0-9.]+(e[-+]?[0-9]+)?", value.strip(), re.IGNORECASE)


def register_secrets_of(mapping: Mapping[str, Any]) -> None:
    """Register the values of ``mapping``'s secret entries (a server's flags or env)."""
    for name, value in mapping.items():
        if is_secret_entry(str(name), value):
            register(value)


def text(value: str) -> str:
    """``value`` with bearer tokens, URL credentials and every registered secret masked."""
    if not value:
        return value
    out = _BEARER.sub(lambda m: m.group(1) + MASK, value)
    out = _URL_CREDENTIALS.sub(lambda m: m.group(1) + MASK + "@", out)
    with _lock:
        known = sorted(_known, key=len, reverse=True)
    for secret in known:
        out = out.replace(secret, MASK)
    return out


def mapping(values: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``values`` (flags or env) with secret-named entries masked and other values
    redacted as text; nested mappings and lists are redacted alike."""
    return {name: MASK if is_secret_entry(str(name), value) else value_of(value) for name, value in values.items()}


def value_of(value: Any) -> Any:
    """Any JSON-like value with its strings redacted and its secret-named keys masked."""
    if isinstance(value, str):
        return text(value)
    if isinstance(value, Mapping):
        return mapping(value)
    if isinstance(value, (list, tuple)):
        return [value_of(v) for v in value]
    return value


def argv(args: list[str]) -> list[str]:
    """A command line with the value of a secret flag (``--api-key K``, ``--hf-token=T``) masked
    and every other argument redacted as text."""
    out: list[str] = []
    secret_flag: str | None = None  # the flag whose value comes next
    for arg in args:
        if secret_flag is not None and not arg.startswith("--"):
            out.append(MASK if is_secret_entry(secret_flag, arg) else text(arg))
            secret_flag = None
            continue
        secret_flag = None
        name, sep, value = arg.partition("=")
        if arg.startswith("--") and is_secret_name(name):
            if sep:
                out.append(f"{name}={MASK}" if is_secret_entry(name, value) else text(arg))
            else:
                out.append(arg)
                secret_flag = name
            continue
        out.append(text(arg))
    return out
