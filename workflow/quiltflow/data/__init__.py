"""From a lookup to shards: readers, filters, near-duplicates, units, splits, the demo generator, image preparation, shard writing."""
