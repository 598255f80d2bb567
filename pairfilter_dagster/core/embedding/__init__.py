"""Image files to unit-length embeddings: the model (`model`), where it runs (`local`, `ray_engine`, both behind
the `engine.EmbeddingEngine` protocol) and the cache that makes each picture cost one forward pass, ever."""
