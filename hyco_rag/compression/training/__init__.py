"""Training the compressor: data and labels (:mod:`.data`), reader distillation (:mod:`.distill`),
the trainer (:mod:`.trainer`) and the quick answer-recall check (:mod:`.evaluate`).

Entry point: ``hyco-rag train compressor`` (:mod:`hyco_rag.cli.train_compressor`).
"""
