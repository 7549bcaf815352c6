"""widgets.literal: a user-given name shows in Streamlit's Markdown exactly as typed (issue 24, defect 2).

Unit tests of the helper, and AppTest tests that the Explore page passes a renamed cluster's name
through it into the Image view's metric and the rename's flash message. (The browser's own
rendering of such a name is checked in tests/test_browser_pickers.py.)
"""

from __future__ import annotations

import re
import string

import pytest

from webapp import widgets

from test_app_explore import no_exception, page

NAMES = [
    'x **bold** [link](http://example.com) :red[red]',
    '=HYPERLINK("http://x","y")',
    ':smile: :material/home: www.example.com $x^2$ <b>h</b> &amp; ~~gone~~ _i_ `code`',
    '1. not a list', '# not a heading', '- not a bullet', '> not a quote', 'back\\slash', 'mail me@example.com',
]


def shown(markdown: str) -> str:
    """What CommonMark displays for text made only of characters and backslash escapes."""
    return re.sub(r"\\(.)", r"\1", markdown).replace("\u2060", "")


@pytest.mark.parametrize("name", NAMES)
def test_literal_escapes_every_markdown_form(name):
    text = widgets.literal(name)
    assert shown(text) == name  # the escapes show as the name, nothing lost
    unescaped = re.sub(r"\\.", "", text)
    assert not set(unescaped) & set(string.punctuation), text  # no punctuation left for markdown to read
    assert not re.search(r"https?:/|www\.|@\w", text.replace("\\", ""))  # nothing GFM would auto-link


def test_literal_keeps_plain_words_and_flattens_line_breaks():
    assert widgets.literal("deep scratch 2") == "deep scratch 2"
    assert widgets.literal("a\nb") == "a b"
    assert widgets.literal(12) == "12"


def test_explore_shows_a_markdown_name_literally_in_the_image_metric_and_the_rename_message(filled):
    name = NAMES[0]
    first = filled.store.run_assignments(filled.run_id)[0]
    at = page("explore", filled, explore_image=first.region.image).run()
    no_exception(at)
    at.selectbox(key="rename_cluster").set_value(first.cluster_id)
    at.text_input(key="rename_name").input(name)
    at.button(key="FormSubmitter:explore_rename-Rename").click().run()
    no_exception(at)
    assert filled.store.get_cluster(first.cluster_id).name == name
    assert len(at.success) == 1 and at.success[0].value.endswith(f" to “{widgets.literal(name)}”.")
    metric = next(m for m in at.metric if m.label.startswith("Image class"))
    assert metric.value == widgets.literal(name)
