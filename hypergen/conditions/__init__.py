"""Conditioners: turn a batch of conditions into vectors for the hypernetwork.

registry.py   the ``Conditioner`` interface, ``CONDITIONERS``, ``build_conditioner`` and
              ``condition_from_parts`` (request parts -> the condition a checkpoint takes)
text.py       task descriptions -> sentence embeddings (sentence-transformers)
hashing.py    descriptions -> hashed bag-of-words vectors (tests, CPU smoke runs)
language.py   language codes -> URIEL typology vectors (lang2vec's data)
document.py   context documents -> chunked, embedded, mean-pooled sentence vectors
demonstrations.py  input/output examples -> one rendered text -> the document path
composite.py  several parts (description + language) -> their vectors concatenated
"""
