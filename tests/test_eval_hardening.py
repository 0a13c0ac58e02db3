"""Issue 13, build item 8: the evaluation details an audit found. The pointing game's chance level follows its own
hit rule (the tolerance), Xi-style cross-validation is labelled as selecting on its test fold, ensemble members
are averaged by ROI id (refused on a mismatch), and degenerate bootstrap intervals are flagged."""

from __future__ import annotations

import numpy as np
import pytest

from mammoflow.evaluation import pointing

# ------------------------------------------------------------------------------------------- (a) pointing game


def _scene(shape=(60, 80), lesion=(30, 30, 5)):
    breast = np.zeros(shape, bool)
    breast[:, :64] = True
    rows, cols = np.ogrid[:shape[0], :shape[1]]
    mask = (rows - lesion[0]) ** 2 + (cols - lesion[1]) ** 2 <= lesion[2] ** 2
    return mask, breast


@pytest.mark.parametrize("tolerance", [0.0, 4.0, 12.0])
def test_chance_is_the_hit_rate_of_a_peak_drawn_uniformly_in_the_breast(tolerance):
    """Enumerate every breast pixel as the map's peak, play the game at that tolerance: the share of hits is the
    chance level, exactly."""
    lesion, breast = _scene()
    hits = []
    for r, c in np.argwhere(breast):
        cam = np.zeros(lesion.shape, np.float32)
        cam[r, c] = 1.0
        hits.append(pointing.pointing_game(cam, lesion, breast, tolerance)["hit"])
    assert pointing.chance_hit_rate(lesion, breast, tolerance) == pytest.approx(np.mean(hits))


def test_chance_with_a_tolerance_is_the_dilated_lesion_not_the_lesion():
    """A 5 px lesion with a 12 px tolerance: the hit region is a disc of about 17 px, so chance is ~11x the lesion
    area over the breast (the old rule reported the bare lesion area)."""
    lesion, breast = _scene()
    bare = pointing.chance_hit_rate(lesion, breast)
    assert bare == pytest.approx(lesion.sum() / breast.sum())
    tolerant = pointing.chance_hit_rate(lesion, breast, 12.0)
    disc = np.pi * 17 ** 2 / breast.sum()
    assert tolerant == pytest.approx(disc, rel=0.08) and tolerant > 8 * bare
    # The cam module serves the same functions (its public API).
    from mammoflow.evaluation import cam as C

    assert C.chance_hit_rate(lesion, breast, 12.0) == tolerant
