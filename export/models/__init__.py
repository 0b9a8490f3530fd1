"""One module per family: a stage table and one builder, registered in ``export.registry``."""
