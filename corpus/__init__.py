"""Records, readers, the atomic shard writer and executors: everything about data at rest."""
