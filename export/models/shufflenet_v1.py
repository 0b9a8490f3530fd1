"""shufflenet_v1 family (table + builder), registered in export.registry."""
