"""Errors of the engine that the command line and the app show as one clear line, no traceback."""

from __future__ import annotations

__all__ = ["UserError"]


class UserError(Exception):
    """An error caused by the user's input (files, settings); the message says what to fix."""
