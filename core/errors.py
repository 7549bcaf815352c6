"""Errors of the engine that the command line and the app show as one clear line, no traceback."""

from __future__ import annotations

__all__ = ["DiscoveryCancelled", "PipelineError", "UserError"]


class UserError(Exception):
    """An error caused by the user's input (files, settings); the message says what to fix."""


class PipelineError(UserError):
    """Input the pipeline cannot work with; the message says what is wrong and what to do."""


class DiscoveryCancelled(Exception):
    """Raised when should_cancel() turns true between stages (before a model exists)."""
