"""File formats: one reader and one writer per file (TFRecords, tables, shard index, predictions, metrics documents, split report)."""
