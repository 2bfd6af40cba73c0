"""knarr-watchman: the process supervisor for production nodes."""
