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

from collections.abc import Callable

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


def read_source(name: str, opts: SourceOptions) -> RecordsTable:
    """Read source ``name`` (a key of :data:`SOURCES`) with ``opts``."""
    if name not in SOURCES:
        raise KeyError(f"unknown source {name!r}; known: {', '.join(SOURCES)}")
    return SOURCES[name](opts)


__all__ = ["DEFAULT_SALT", "DEMO_SALT", "SALT_ENV", "SOURCES", "Reader", "SourceOptions", "parse_info", "read_cbis_ddsm",
           "read_dicom_dir", "read_mias", "read_mias_rois", "read_source", "resolve_salt"]
