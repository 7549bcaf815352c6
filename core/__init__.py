"""Defect Discovery Studio engine: anomaly maps -> MEBin -> regions -> MGViT -> classes.

The engine is pure computation on arrays and plain records; it knows nothing of
Streamlit or SQL (see tests/test_layering.py).
"""

__version__ = "0.1.0"
