"""Reproductions of the papers' experiments on real data (``mammoflow reproduce``)."""
