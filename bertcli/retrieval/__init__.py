"""Retrieval: the index format, exact and approximate search, reranking with cross-encoders, IR metrics."""
