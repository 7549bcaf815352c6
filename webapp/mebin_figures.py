"""The Detection & MEBin page's pictures: an image with its crop boxes, the map as a heat
overlay, the MEBin mask, and MEBin's evidence (components per threshold) as plotly charts.

No storage access here: everything is drawn from arrays and the stored binarization records.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import pandas as pd
import plotly.graph_objects as go

from core.regions import mebin
from webapp import widgets

DISPLAY_SIDE = 360  # pixels: small images are enlarged (nearest) so boxes and masks stay visible
BOX_COLOR = (0, 200, 255)


def enlarge(array: np.ndarray, side: int = DISPLAY_SIDE) -> tuple[np.ndarray, float]:
    """Scale an image so its longer side is at least `side` (nearest neighbour); returns the factor."""
    height, width = array.shape[:2]
    factor = max(1.0, side / max(height, width))
    if factor == 1.0:
        return array, 1.0
    size = (int(round(width * factor)), int(round(height * factor)))
    return cv2.resize(array, size, interpolation=cv2.INTER_NEAREST), factor


def draw_boxes(image: np.ndarray, boxes: list[tuple[int, int, int, int]], labels: list[str] | None = None) -> np.ndarray:
    shown, factor = enlarge(image)
    shown = shown.copy()
    for index, (x0, y0, x1, y1) in enumerate(boxes):
        start = (int(x0 * factor), int(y0 * factor))
        end = (int(x1 * factor) - 1, int(y1 * factor) - 1)
        cv2.rectangle(shown, start, end, BOX_COLOR, 2)
        text = labels[index] if labels else str(index)
        cv2.putText(shown, text, (start[0] + 4, start[1] + 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, BOX_COLOR, 1, cv2.LINE_AA)
    return shown


def heat_overlay(image: np.ndarray, map_u8: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The map in the 'turbo' colormap blended over the image."""
    if map_u8.shape != image.shape[:2]:
        map_u8 = cv2.resize(map_u8, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
    colored = cv2.cvtColor(cv2.applyColorMap(map_u8, cv2.COLORMAP_TURBO), cv2.COLOR_BGR2RGB)
    blended = cv2.addWeighted(image, 1.0 - alpha, colored, alpha, 0.0)
    return enlarge(blended)[0]


def mask_view(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The mask in white over a darkened image, with its outline."""
    if mask.shape != image.shape[:2]:
        mask = cv2.resize(mask, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_NEAREST)
    shown = (image.astype(np.float32) * 0.35).astype(np.uint8)
    shown[mask > 0] = (255, 255, 255)
    shown, factor = enlarge(shown)
    big_mask = enlarge(mask)[0]
    contours, _ = cv2.findContours((big_mask > 0).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(shown, contours, -1, (255, 64, 64), 2)
    return shown


def sweep_on_map_scale(record: dict[str, Any]) -> list[int]:
    """MEBin's swept thresholds expressed on the map's own 0..255 scale (docs/method.md stage 2)."""
    settings = record.get("settings") or {}
    sweep = settings.get("sweep") or list(range(255, 0, -int(settings.get("sample_rate", 4))))
    s_min, s_max = int(settings.get("s_min", 0)), int(settings.get("s_max", 255))
    return [mebin.to_map_scale(t, s_min, s_max) for t in sweep]


def evidence_chart(record: dict[str, Any]) -> go.Figure:
    """Component count per swept threshold, the stable interval shaded, the chosen threshold marked."""
    counts = list(record.get("counts") or [])
    thresholds = sweep_on_map_scale(record)[: len(counts)]
    figure = go.Figure(go.Scatter(x=thresholds, y=counts, mode="lines+markers", line_shape="hv",
                                  name="components", marker=dict(size=4), line=dict(color="#2563eb")))
    interval = (record.get("settings") or {}).get("interval")
    if interval and len(thresholds) > interval[1]:
        low, high = thresholds[interval[1]], thresholds[interval[0]]
        figure.add_vrect(x0=low, x1=high, fillcolor="#22c55e", opacity=0.2, line_width=0,
                         annotation_text="stable interval", annotation_position="top left",
                         annotation_font=dict(size=11, color="#15803d"))
    chosen = int(record["threshold"])
    if chosen < 255:
        figure.add_vline(x=chosen, line_dash="dash", line_color="#dc2626",
                         annotation_text=f"chosen {chosen}", annotation_position="bottom right",
                         annotation_font=dict(size=11, color="#dc2626"))
    # Zoom onto the thresholds where components exist: above them every count is 0.
    active = [t for t, c in zip(thresholds, counts) if c > 0]
    if active and thresholds:
        low, high = min(thresholds), max(active)
        high = min(max(thresholds), high + max(8, (high - low) * 0.25))
        figure.update_xaxes(range=[low - 2, high])
    layout = dict(widgets.CHART_LAYOUT, height=260)
    figure.update_layout(**layout, title="MEBin evidence: components per threshold", showlegend=False,
                         xaxis_title="threshold (map scale)", yaxis_title="connected components")
    figure.update_yaxes(rangemode="tozero", dtick=1 if max(counts or [0]) <= 8 else None)
    return figure


def distribution_charts(binarizations: list[dict[str, Any]]) -> tuple[go.Figure, go.Figure]:
    thresholds = [b["threshold"] for b in binarizations if b["num_anomalies"] > 0]
    threshold_figure = go.Figure(go.Histogram(x=thresholds, nbinsx=32, marker_color="#2563eb"))
    threshold_figure.update_layout(**widgets.CHART_LAYOUT, title="Chosen thresholds (images with anomalies)",
                                   xaxis_title="threshold (map scale)", yaxis_title="images", bargap=0.05)
    counts = pd.Series([b["num_anomalies"] for b in binarizations]).value_counts().sort_index()
    count_figure = go.Figure(go.Bar(x=[str(c) for c in counts.index], y=counts.values, marker_color="#0f766e"))
    count_figure.update_layout(**widgets.CHART_LAYOUT, title="Estimated anomalies per image",
                               xaxis_title="anomalies (0 = nothing found)", yaxis_title="images")
    return threshold_figure, count_figure
