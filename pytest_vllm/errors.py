"""One error hierarchy, so callers can tell a user's mistake from a server's failure."""

from __future__ import annotations


class VLLMPluginError(Exception):
    """Base class of every error this plugin raises on purpose."""


class UsageError(VLLMPluginError):
    """The user asked for something invalid (a flag, a path, an option); the message says the fix."""


class ServerStartError(VLLMPluginError):
    """A vLLM server exited or timed out while booting; the message holds its log tail."""


class BaselineError(VLLMPluginError):
    """A baseline file is missing, corrupt or of another schema."""
