"""Model registry: every model of the three papers by name."""
