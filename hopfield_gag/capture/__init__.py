"""Layer 5, capture: attention tensors recorded from real models into a crash-safe :class:`ActivationStore`.

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

# The recorder builds on the adapters, whose call runner is wrapped by torch._dynamo (an import of seconds that
# pulls in sympy): it loads on first use so that `import hopfield_gag` stays light (tests/test_layout.py).
_RECORDER_NAMES = ("COMPUTE", "MARGINS", "Capture", "Extractor", "ProjectionExtractor", "capture", "model_fingerprint")


def __getattr__(name):
    if name in _RECORDER_NAMES:
        from . import recorder

        return getattr(recorder, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

