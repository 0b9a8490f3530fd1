"""efficientnet family (table + builder), registered in export.registry."""
