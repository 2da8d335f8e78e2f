"""One error hierarchy, so callers can tell a user's mistake from a server's failure."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")
T = TypeVar("T")


class VLLMPluginError(Exception):
    """Base class of every error this plugin raises on purpose."""


class UsageError(VLLMPluginError):
    """The user asked for something invalid (a flag, a path, an option); the message says the fix."""


class ServerStartError(VLLMPluginError):
    """A vLLM server exited or timed out while booting; the message holds its log tail."""


class ServerDiedError(VLLMPluginError):
    """A server that was ready died, for the second time this session (it is rebooted once); the
    message holds how it died and its log tail."""


class BaselineError(VLLMPluginError):
    """A baseline file is missing, corrupt or of another schema."""


class StorageError(VLLMPluginError):
    """A file could not be written durably (its lock stayed held); the message names the file."""


def parse_each(items: Mapping[K, V], parse: Callable[[K, V], T]) -> dict[K, T]:
    """``parse`` every item; then one UsageError naming every bad item, not only the first."""
    problems, parsed = [], {}
    for key, raw in items.items():
        try:
            parsed[key] = parse(key, raw)
        except UsageError as exc:
            problems.append(str(exc))
    if problems:
        raise UsageError("\n".join(problems))
    return parsed
