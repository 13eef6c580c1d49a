"""Activation extraction: ``extract`` (the loop), ``ActivationStore`` (the on-disk result), torchrun scale-out.

Modules: ``extractor`` (``rs.extract``), ``store`` (file layout and the memory-mapped reader), ``writer``
(claiming a store directory, atomic shards, the manifest), ``key`` (what a store is keyed by), ``loader``
(shard-aligned batches from map-style datasets and streams), ``ranks`` (the shards each torchrun rank
extracts).
"""
