"""Task data: task suites in BIG-bench JSON format (``tasks``), their descriptions, the
hypernetwork's conditions (``descriptions``), and prompt/completion token batches
(``text_batches``). Used by training and evaluation; the public names are re-exported from
``hypergen``."""
