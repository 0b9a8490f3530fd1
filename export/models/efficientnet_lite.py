"""efficientnet_lite family (table + builder), registered in export.registry."""
