"""mobilenet_v3 family (table + builder), registered in export.registry."""
