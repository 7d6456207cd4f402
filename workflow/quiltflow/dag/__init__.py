"""What the Snakefile needs while it builds the DAG: config validation, the pretraining plan, code hashes, shard planning (standard library only)."""
