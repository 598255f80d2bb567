"""The data path, free of Dagster: samples -> images -> embeddings -> pair scores -> keep decision -> outputs.

Nothing here imports torch or transformers at module level; `embedding.model.ClipEmbedder.load` does, when a model is
actually needed, so that loading the Dagster definitions (UI, CLI) stays fast.
"""
