"""Layer ``capture``: attention tensors recorded from real models (:mod:`.capture`) into a crash-safe
:class:`ActivationStore` (:mod:`.store`); third-party captures come in through :func:`import_tensors`."""
from .recorder import COMPUTE, MARGINS, Capture, Extractor, ProjectionExtractor, capture, model_fingerprint
from .imports import LAYOUTS, import_tensors
from .store import (
    FORMAT,
    FORMAT_VERSION,
    ActivationStore,
    ShardError,
    StoreError,
    StoreMismatchError,
    read_shard_file,
)

__all__ = [
    "ActivationStore", "ShardError", "StoreError", "StoreMismatchError", "read_shard_file",
    "FORMAT", "FORMAT_VERSION", "import_tensors", "LAYOUTS",
    "capture", "Capture", "Extractor", "ProjectionExtractor", "model_fingerprint", "COMPUTE", "MARGINS",
]
