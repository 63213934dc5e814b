"""The run directory: its reader, its writer (atomic files) and resuming a stopped run."""
