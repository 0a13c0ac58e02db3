"""One reader per dataset; each turns a source into a RecordsTable plus quarantine.

:data:`SOURCES` maps the names ``mammoflow ingest --source`` accepts to readers with one signature,
``reader(SourceOptions) -> RecordsTable``. Each module also has a richer function for library use
(:func:`read_mias`, :func:`read_mias_rois`, :func:`read_cbis_ddsm`, :func:`read_dicom_dir`).

Every reader accounts for every input: read = used (``table.records``) + quarantined (``table.quarantine``, with
the problem and the fix) + skipped (``table.skipped``, with the reason). A salt is required where patient ids come
from a site's identifiers (``dicom-dir``; :func:`resolve_salt`); sources whose ids are public need none.
:mod:`mammoflow.sources.resume` writes a records folder all or nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from mammoflow.errors import ConfigError
from mammoflow.records import RecordsTable
from mammoflow.sources import cbis_ddsm, dicom_dir, mias, mias_rois
from mammoflow.sources._common import DEFAULT_SALT, DEMO_SALT, SALT_ENV, SourceOptions, resolve_salt
from mammoflow.sources.cbis_ddsm import read_cbis_ddsm
from mammoflow.sources.dicom_dir import read_dicom_dir
from mammoflow.sources.mias import parse_info, read_mias
from mammoflow.sources.mias_rois import read_mias_rois

Reader = Callable[[SourceOptions], RecordsTable]

SOURCES: dict[str, Reader] = {
    "mias": mias.read_source,
    "mias-rois": mias_rois.read_source,
    "cbis-ddsm": cbis_ddsm.read_source,
    "dicom-dir": dicom_dir.read_source,
}


#: Readers that call :func:`mammoflow.storage.copies.materialise` before reading each image, so a remote data root
#: can be streamed through a bounded local window (:class:`~mammoflow.storage.copies.StreamedTree`) instead of
#: copied whole; the others get a full local copy.
STREAMED_SOURCES = ("mias", "cbis-ddsm", "dicom-dir")

#: Sources that read a labels CSV (``labels`` of :func:`ingest`, ``--labels`` of ``mammoflow ingest``).
LABELLED_SOURCES = ("dicom-dir",)


def check_labels(source: str, labels: str | os.PathLike[str] | None) -> None:
    """Refuse a labels CSV for a source that does not read one (it would be ignored without a word)."""
    if labels and source not in LABELLED_SOURCES:
        phantoms = " (the built-in phantoms are read as mias)" if source == "mias" else ""
        raise ConfigError(f"a labels CSV ({labels}) was given for source {source!r}{phantoms}, which takes none: "
                          f"only {', '.join(LABELLED_SOURCES)} reads labels from a CSV. Fix: give no labels CSV, or "
                          f"use source {LABELLED_SOURCES[0]}")


def check_pseudonymise_paths(source: str, pseudonymise_paths: bool) -> None:
    """Refuse path pseudonyms for a source whose record ids do not come from file paths under a site's folder."""
    if pseudonymise_paths and source not in LABELLED_SOURCES:
        raise ConfigError(f"pseudonymise_paths was asked for source {source!r}, whose record ids are the dataset's "
                          f"public names, not a site's paths. Fix: use it with {', '.join(LABELLED_SOURCES)} only")


def read_source(name: str, opts: SourceOptions) -> RecordsTable:
    """Read source ``name`` (a key of :data:`SOURCES`) with ``opts``."""
    if name not in SOURCES:
        raise KeyError(f"unknown source {name!r}; known: {', '.join(SOURCES)}")
    return SOURCES[name](opts)


__all__ = ["DEFAULT_SALT", "DEMO_SALT", "LABELLED_SOURCES", "SALT_ENV", "SOURCES", "check_labels", "check_pseudonymise_paths", "Reader", "SourceOptions", "parse_info", "read_cbis_ddsm",
           "read_dicom_dir", "read_mias", "read_mias_rois", "read_source", "resolve_salt"]
