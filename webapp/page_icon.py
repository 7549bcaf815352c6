"""The browser tab's icon, drawn here (a lens on a teal square) so no page asks a font server for it.

Streamlit turns a ":material/...:" page icon into a request to fonts.gstatic.com, which fails
offline; an image is served by the Studio itself.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np
from PIL import Image

SIZE = 64


@functools.cache
def page_icon() -> Image.Image:
    """A 64 x 64 RGB icon: a white magnifying lens over a teal rounded square."""
    icon = np.full((SIZE, SIZE, 3), 255, dtype=np.uint8)
    teal = (15, 118, 110)
    cv2.rectangle(icon, (6, 0), (SIZE - 7, SIZE - 1), teal, -1)
    cv2.rectangle(icon, (0, 6), (SIZE - 1, SIZE - 7), teal, -1)
    for cx, cy in ((6, 6), (SIZE - 7, 6), (6, SIZE - 7), (SIZE - 7, SIZE - 7)):
        cv2.circle(icon, (cx, cy), 6, teal, -1)
    cv2.circle(icon, (27, 27), 14, (255, 255, 255), 5, cv2.LINE_AA)
    cv2.line(icon, (38, 38), (52, 52), (255, 255, 255), 7, cv2.LINE_AA)
    return Image.fromarray(icon)
