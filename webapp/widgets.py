"""Generic display helpers shared by the pages: empty states, metric cards, run status and
progress, the loss chart, formatting. No page logic here; user text is never rendered as HTML.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from typing import Any

import pandas as pd
import streamlit as st

from storage import CANCELLED, DONE, FAILED, QUEUED, RUNNING, RunInfo
from jobs.progress import LINEAR_BAND, linear_remaining

#: Badge color per run status.
STATUS_COLORS = {QUEUED: "gray", RUNNING: "blue", DONE: "green", FAILED: "red", CANCELLED: "orange"}
STATUS_ICONS = {
    QUEUED: ":material/schedule:", RUNNING: ":material/progress_activity:", DONE: ":material/check_circle:",
    FAILED: ":material/error:", CANCELLED: ":material/cancel:",
}
#: Plotly layout shared by the app's small charts.
CHART_LAYOUT: dict[str, Any] = dict(
    template="plotly_white", margin=dict(l=10, r=10, t=36, b=10), height=280,
    font=dict(size=12), legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0),
)


# ------------------------------------------------------------------------------ formatting


def format_duration(seconds: float | None) -> str:
    """'2 h 05 min', '3 min 07 s', '12 s', or an en dash when unknown."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "–"
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    if seconds >= 60:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds} s"


def format_bytes(size: float | None) -> str:
    if size is None:
        return "–"
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def as_utc(moment: datetime | None) -> datetime | None:
    """Storage returns naive UTC or aware datetimes; make them aware UTC."""
    if moment is None:
        return None
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def format_time(moment: datetime | None) -> str:
    moment = as_utc(moment)
    return moment.astimezone().strftime("%Y-%m-%d %H:%M") if moment else "–"


def run_elapsed(run: RunInfo, now: datetime | None = None) -> float | None:
    """Seconds the run has been working (until it finished, for a finished run)."""
    start = as_utc(run.started_at)
    if start is None:
        return None
    end = as_utc(run.finished_at) or as_utc(now) or datetime.now(timezone.utc)
    return max(0.0, (end - start).total_seconds())


def run_remaining(run: RunInfo, now: datetime | None = None) -> float | None:
    """Seconds left: the worker's estimate from the bar's measured speed, run down since it was
    written but not below the average speed's time left over the band (a stalled worker writes
    nothing); before the worker has one, the average speed's; None while too early to say."""
    if run.status != RUNNING:
        return 0.0 if run.status == DONE else None
    measured = (run.timings or {}).get("remaining_s")
    written = as_utc(run.heartbeat_at)
    elapsed = run_elapsed(run, now)
    linear = None if elapsed is None or run.progress < 0.03 or elapsed < 2 else linear_remaining(elapsed, run.progress)
    if isinstance(measured, (int, float)) and written is not None:
        since = ((as_utc(now) or datetime.now(timezone.utc)) - written).total_seconds()
        # a stalled worker writes nothing: run down, but not below the band around the average speed
        return max(0.0, float(measured) - max(0.0, since), (linear or 0.0) / LINEAR_BAND)
    return linear


def classes_text(run: RunInfo) -> str:
    """'5', or 'auto → 3' once an estimated run recorded what it chose."""
    classes = run.settings.get("classes", "auto")
    estimate = (run.metrics or {}).get("class_estimate") or {}
    if str(classes) == "auto" and estimate.get("n_classes", estimate.get("k")) is not None:
        return f"auto → {estimate.get('n_classes', estimate.get('k'))}"
    return str(classes)


def confidence_words(estimate: dict[str, Any]) -> str | None:
    """How sure a recorded estimate is, in words: core's word with its number ('fairly sure (0.42)')."""
    confidence = estimate.get("confidence")
    word = estimate.get("sureness")
    if isinstance(confidence, (int, float)):
        word = word or ("sure" if confidence >= 0.6 else "fairly sure" if confidence >= 0.3 else "unsure")
        return f"{word} ({confidence:.2f})"
    return word if isinstance(word, str) else None


def class_estimate_note(run: RunInfo) -> None:
    """For a run with K = auto: which K it chose, how sure the estimate is, and the evidence."""
    estimate = (run.metrics or {}).get("class_estimate")
    if not isinstance(estimate, dict) or estimate.get("k") is None:
        return
    k = estimate.get("n_classes", estimate["k"])
    sure = confidence_words(estimate)
    text = f"**K = {k}** new classes, chosen automatically" + (f" · {sure}" if sure else "")
    if k != estimate["k"]:
        text += f" (the estimate counted {estimate['k']} classes, the named ones included)"
    if sure and sure.startswith("unsure"):
        text += (". The crops do not separate clearly: if you know how many defect types to expect, set K "
                 "yourself and compare the runs on Labels & runs.")
    st.markdown(":material/functions: " + escape_markdown_keep_bold(text))
    details = estimate.get("description") or estimate.get("summary") or estimate.get("note")
    if details:
        with st.expander("How K was estimated"):
            st.code(str(details), language=None)


def escape_markdown_keep_bold(text: str) -> str:
    """Our own text with ** bold kept; anything else markdown would read is escaped."""
    return "**".join(literal(part) for part in text.split("**"))


def empty_state(title: str, body: str, icon: str = ":material/inbox:") -> None:
    """A friendly bordered message where a page has nothing to show yet."""
    with st.container(border=True):
        st.markdown(f"{icon} **{title}**")
        st.caption(body)


def metric_cards(items: Sequence[tuple[str, Any] | tuple[str, Any, str | None]]) -> None:
    """A row of st.metric cards: (label, value) or (label, value, help)."""
    columns = st.columns(len(items))
    for column, item in zip(columns, items):
        label, value, *rest = item
        column.metric(label, value, help=rest[0] if rest else None, border=True)


def status_badge(status: str) -> None:
    st.badge(status, color=STATUS_COLORS.get(status, "gray"), icon=STATUS_ICONS.get(status))


def problems_list(problems: Iterable[str], title: str = "Problems", limit: int = 500) -> None:
    """Problems by file name in a folded table (plain text, never HTML)."""
    problems = list(problems)
    if not problems:
        return
    with st.expander(f":material/warning: {title} ({len(problems)})", expanded=len(problems) <= 5):
        frame = pd.DataFrame({"problem": problems[:limit]})
        st.dataframe(frame, hide_index=True, width="stretch")
        if len(problems) > limit:
            st.caption(f"... and {len(problems) - limit} more")


def bullet_notes(notes: Iterable[str]) -> None:
    """Plain-text bullets (each note is escaped by st.text-like rendering through st.caption)."""
    for note in notes:
        st.markdown(f"- {literal(note)}")


#: Where Markdown (GFM) would turn plain text into a link even with its punctuation escaped: after
#: the colon of '://', between 'www' and its dot, after an e-mail's '@'.
_AUTOLINK = re.compile(r"(?<=:)(?=//)|(?<=www)(?=\.)|(?<=@)", re.IGNORECASE)
#: An invisible word joiner: breaks an autolink without changing what the text shows.
_WORD_JOINER = "\u2060"
_PUNCTUATION = frozenset(string.punctuation)


def literal(text: object) -> str:
    """Text a user gave (a cluster or project name, a file name) made literal for Streamlit's Markdown.

    Every ASCII punctuation character is backslash-escaped (CommonMark allows it for all of them),
    so no bold, link, heading, list, :color[...] directive, :emoji: or $math$ forms; a word joiner
    keeps URLs and e-mail addresses from being auto-linked; line breaks show as spaces. For
    st.markdown, st.caption, st.metric, alerts, button labels and help texts alike.
    """
    text = _AUTOLINK.sub(_WORD_JOINER, str(text).replace("\r", " ").replace("\n", " "))
    return "".join("\\" + char if char in _PUNCTUATION else char for char in text)


#: The same helper under its former name (callers in pages outside this change).
escape_markdown = literal


# ------------------------------------------------------------------------------ runs


def progress_panel(run: RunInfo) -> None:
    """Status badge, progress bar with stage and step, elapsed and remaining time."""
    stage = run.stage or ("waiting for a worker" if run.status == QUEUED else run.status)
    remaining = run_remaining(run)
    top = st.container(horizontal=True, vertical_alignment="center")
    with top:
        status_badge(run.status)
        st.caption(f"Run #{run.id} · {run.kind} · started {format_time(run.started_at or run.created_at)}")
    text = f"{stage}" + (f" — {run.message}" if run.message and run.status in (QUEUED, RUNNING) else "")
    st.progress(min(max(float(run.progress or 0.0), 0.0), 1.0), text=literal(text[:200]))
    metric_cards([
        ("Progress", f"{100 * (run.progress or 0.0):.0f} %"),
        ("Elapsed", format_duration(run_elapsed(run))),
        ("Remaining", format_duration(remaining) if remaining is not None else "estimating ..."
         if run.status == RUNNING else "–"),
    ])
    if run.status == FAILED and run.message:
        st.error(f"The run failed: {literal(run.message)}", icon=":material/error:")
    elif run.status == CANCELLED:
        st.warning("The run was cancelled.", icon=":material/cancel:")


def run_summary(run: RunInfo) -> None:
    """A finished run in two lines: status, when, how long; then its message or error."""
    when = format_time(run.finished_at or run.created_at)
    with st.container(horizontal=True, vertical_alignment="center"):
        status_badge(run.status)
        st.caption(f"Run #{run.id} · {run.kind} · finished {when} · took {format_duration(run_elapsed(run))}")
    if run.status == FAILED:
        st.error(f"The run failed: {literal(run.message or 'no message')}", icon=":material/error:")
    elif run.status == CANCELLED:
        text = (run.message or "cancelled").strip()
        st.warning(literal(f"The run was {text.removeprefix('the run was ')}." if text.startswith("cancelled") else text),
                   icon=":material/cancel:")
    elif run.message:
        st.markdown(literal(run.message))


def page_link(page: str, label: str, icon: str | None = None) -> None:
    """st.page_link to another page; plain text when the page runs alone (AppTest of one page)."""
    from streamlit.errors import StreamlitPageNotFoundError

    try:
        st.page_link(page, label=label, icon=icon)
    except StreamlitPageNotFoundError:
        st.caption(label)
