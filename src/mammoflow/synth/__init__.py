"""Synthetic phantom mammograms with known ground truth (the built-in demo data)."""
