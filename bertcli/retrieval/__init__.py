"""Retrieval: the index format, exact and approximate search, IR metrics, hard-negative mining, reranking.

* :mod:`bertcli.retrieval.beir` reads BEIR-format data (``corpus.jsonl``, ``queries.jsonl``, ``qrels/*.tsv``)
  and the other document sources ``bertcli index`` takes (text files, CSV/TSV/JSONL tables).
* :mod:`bertcli.retrieval.index` builds, appends to, resumes and opens an index directory.
* :mod:`bertcli.retrieval.search` ranks an index's documents for queries (exact, or FAISS HNSW / IVF).
* :mod:`bertcli.retrieval.metrics` computes nDCG, MRR, MAP, recall, precision and accuracy at k.
* :mod:`bertcli.retrieval.negatives` mines hard negatives for ``finetune --loss mnrl --negative-column``.
* :mod:`bertcli.retrieval.rerank` rescores candidates with a cross-encoder (``CrossEncoder.predict``'s scores).
"""
