"""Developer tools (manifest validation, etc.)."""
