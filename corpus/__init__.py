"""Records, readers, the atomic shard writer, the operator contract and executors, and the code
every layer above shares (text normalisation and shingles, MinHash, the embedding cache)."""
