"""The app's one message system: a message queued before a rerun is shown once on the next run.

Every page calls `show()` near its top; actions call `flash(kind, text)` and then `st.rerun()`,
or run a storage edit through `perform`, which turns storage errors into messages. Text is shown
as given (markdown: the caller makes names literal with widgets.literal; storage errors are made
literal here), never as HTML.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import streamlit as st

from storage import EditConflict, NothingToUndo, StorageError
from webapp.widgets import literal

#: Session-state key of the queued messages: list of (kind, text).
FLASH_KEY = "flash_messages"
KINDS = ("success", "info", "warning", "error")
ICONS = {"success": ":material/check_circle:", "info": ":material/info:", "warning": ":material/warning:",
         "error": ":material/error:"}

T = TypeVar("T")


def flash(kind: str, text: str) -> None:
    """Queue a message ("success", "info", "warning", "error") for the next run of the page."""
    if kind not in KINDS:
        raise ValueError(f"message kind must be one of {KINDS}, not {kind!r}")
    st.session_state.setdefault(FLASH_KEY, []).append((kind, text))


def show() -> None:
    """Show and forget the queued messages."""
    for kind, text in st.session_state.pop(FLASH_KEY, []) or []:
        show_one = {"success": st.success, "info": st.info, "warning": st.warning}.get(kind, st.error)
        show_one(text, icon=ICONS.get(kind))


def perform(action: Callable[[], T], success: str | Callable[[T], str]) -> T | None:
    """Run one storage edit; queue its success message, or a clear one when it fails.

    EditConflict (someone else changed the cluster) and other storage errors become messages,
    never tracebacks; the page reruns afterwards and shows the fresh state.
    """
    try:
        result = action()
    except EditConflict as error:
        flash("error", f"Edit conflict: {literal(error)}. The page now shows the latest state; please try again.")
        return None
    except NothingToUndo as error:
        flash("info", literal(str(error).capitalize()) + ".")
        return None
    except StorageError as error:
        flash("error", literal(error))
        return None
    flash("success", success(result) if callable(success) else success)
    return result


#: Help of the detector method choice (Detection & MEBin and Discover pages).
DETECTOR_AUTO_HELP = (
    "auto: template comparison when every image has its own reference (<id>_test with normal/<id>_temp); "
    "else, with normal references, PatchCore on a cached pretrained backbone, or without one the learned "
    "detector fitted to them (20 or more; no weights needed) or PatchCore on the filter bank, whichever "
    "tells held-out normal images from the inspected ones better; else zero-shot (the images compared "
    "with each other).")
