"""Code shared by every side of fedshield: models, data, partitioning, privacy accounting."""
