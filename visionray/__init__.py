"""visionray: the command line and `visionray up|down|status`, on top of every other package."""
