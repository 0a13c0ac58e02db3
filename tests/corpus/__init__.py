"""The bad-input corpus of ``tests/test_bad_input_corpus.py`` (issue 13, build item 9).

Every *kind* of bad input is one row of a table (:class:`~tests.corpus.model.Kind`): a name, the ingest run that
holds it, a function that writes it (a mutation of the project's own synthetic DICOMs, PGMs, CSVs and zips) and
the documented outcome. The tables live in one module per source (``dicom_kinds``, ``mias_kinds``, ``rois_kinds``,
``cbis_kinds``); ``runs`` groups the kinds into a few ``mammoflow`` runs; ``checks`` reads what the console script
left behind and says, per kind, what broke its promise.
"""

from tests.corpus.model import Expect, Kind, RunSpec, Target  # noqa: F401
