"""Reading images: PGM, PNG (also inside zip archives) and DICOM."""
