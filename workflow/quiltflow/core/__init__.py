"""Shared facts: errors, JSON I/O, the config schema and settings, tasks, CV buckets, the architecture registry, paths."""
