"""Preprocessing: pure numpy steps composed by config."""
