"""One reader per dataset; each turns a source into a RecordsTable plus quarantine."""
