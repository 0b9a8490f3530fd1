"""shufflenet_v2 family (table + builder), registered in export.registry."""
