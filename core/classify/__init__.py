"""Classify new images with a finished run's named classes: the model bundle, the open-set classifier,
classification and its outputs (images.csv, regions.csv)."""

from core.classify.bundle import Bundle, BundleError, BundleSource, load_bundle, relabel_bundle, write_bundle
from core.classify.classify import NO_ANOMALY, UNKNOWN, Classification, classify_images, load_images
from core.classify.openset import OpenSetClassifier, fit_open_set

__all__ = ["NO_ANOMALY", "UNKNOWN", "Bundle", "BundleError", "BundleSource", "Classification",
           "OpenSetClassifier",
           "classify_images", "fit_open_set", "load_bundle", "load_images", "relabel_bundle", "write_bundle"]
