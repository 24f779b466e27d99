"""Model in, scores out: input validation, the jit-compiled bucketed scorer, runtimes over exported models, export
(StableHLO, ONNX, SavedModel) and importers of published weights."""
