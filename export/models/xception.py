"""xception family (table + builder), registered in export.registry."""
