"""core's messages in the words of the app's forms, and a failure as the engineer reads it."""

from __future__ import annotations

import re

#: Command-line options core's messages may name, rewritten in the words of the app's forms (in order).
APP_WORDS: list[tuple[str, str]] = [
    (r"(?:pass|use|give|set) --classes(?: K)?", "set the number of classes (K) on the Discover or Labels page"),
    (r"--classes (\d+)", r"K = \1"),
    (r"pass the number of classes", "set the number of classes (K)"),
    (r"--classes(?: K)?", "the number of classes (K)"),
    (r"(?:pass|use|give) --weights(?: FILE)?", "give a weights file (the 'Weights file' field)"),
    (r"--weights(?: FILE)?", "the weights file"),
    (r"(?:pass|use|give) --backbone(?: NAME)?", "choose another backbone"),
    (r"--backbone(?: NAME)?", "the backbone"),
    (r"--device(?: (?:auto|cpu|cuda))?", "the device"),
    (r"(?:pass|use|give) --maps(?: DIR)?", "import anomaly maps on the Detection & MEBin page"),
    (r"--maps(?: DIR)?", "the maps folder"),
    (r"--epochs(?: N)?", "the number of epochs"),
    (r"--ground-truth(?: FILE)?", "a ground-truth file"),
]


def app_wording(text: str) -> str:
    """A message of core in the app's words: command-line options become the fields that set them."""
    for pattern, words in APP_WORDS:
        text = re.sub(pattern, words, text)
    return text


def describe_error(error: BaseException) -> str:
    """The message a failed run keeps: core's words in the app's, the type named when it says little."""
    text = app_wording(str(error).strip())
    if isinstance(error, (ValueError, OSError, KeyError)) or type(error).__name__.endswith("Error"):
        return text or type(error).__name__
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
