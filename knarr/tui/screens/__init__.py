"""The console's screens: the panels, detail views, help and the call dialog."""
