"""Evaluation: voting, metrics with bootstrap CIs, calibration, CAMs, reports."""
