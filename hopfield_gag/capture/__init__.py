"""Layer ``capture``: attention tensors recorded from real models into a crash-safe :class:`ActivationStore`.

- :func:`capture` (:mod:`.recorder`): context manager recording q/k/v (and optionally dense/sparse outputs and
  theory margins) of every selected attention call, through the adapters (diffusers models, the shipped
  models) or torch hooks (any ``nn.Module``);
- :class:`ActivationStore` (:mod:`.store`): the on-disk format, lazy iteration, ``verify()``;
- :func:`import_tensors` (:mod:`.imports`): captures made elsewhere become a store.

Store layout::

    DIR/manifest.json                 format, version, model_id, config_hash, settings, complete,
                                      layers, steps, branches, shards[{name, sha256, bytes, records[...]}]
    DIR/shard-NNNNNN.safetensors      tensors "<i>.q", "<i>.k", "<i>.v", ["<i>.mask", "<i>.dense",
                                      "<i>.sparse", "<i>.margin_*", "<i>.query_index"] + metadata
                                      {"hopfield_gag": {model_id, config_hash, records[facts]}}
"""
from .recorder import COMPUTE, MARGINS, Capture, Extractor, ProjectionExtractor, capture, model_fingerprint
from .imports import LAYOUTS, import_tensors
from .store import (
    FORMAT,
    FORMAT_VERSION,
    ActivationStore,
    ShardError,
    ShardRef,
    StoreError,
    StoreMismatchError,
    read_shard_file,
)

__all__ = [
    "ActivationStore", "ShardError", "ShardRef", "StoreError", "StoreMismatchError", "read_shard_file",
    "FORMAT", "FORMAT_VERSION", "import_tensors", "LAYOUTS",
    "capture", "Capture", "Extractor", "ProjectionExtractor", "model_fingerprint", "COMPUTE", "MARGINS",
]
