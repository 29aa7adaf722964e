"""Conditioners: turn a batch of conditions into vectors for the hypernetwork.

registry.py  the ``Conditioner`` interface, ``CONDITIONERS`` and ``build_conditioner``
text.py      task descriptions -> sentence embeddings (sentence-transformers)
hashing.py   descriptions -> hashed bag-of-words vectors (tests, CPU smoke runs)
"""
