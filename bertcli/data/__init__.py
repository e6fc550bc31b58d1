"""Data readers: plain text with an explicit encoding policy, and CSV/TSV/JSONL tables."""
