"""The console's widgets: the header lines and the panel tables."""
