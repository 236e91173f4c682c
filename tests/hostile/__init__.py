"""The reliability suite's helpers: hostile files, workers under stress, outcomes."""
