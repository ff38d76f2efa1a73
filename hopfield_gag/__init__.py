"""hopfield-gag: Modern Hopfield dynamics, sparse normalizers, Anderson acceleration and geometry-aware
attention guidance (GAG, arXiv 2603.02531; PLADIS, arXiv 2503.07677)."""
from .normalizers import (
    Entmax,
    Normalize,
    Softmax,
    Sparsemax,
    entmax,
    jacobian_vector_product,
    jacobian_weights,
    normalize,
    softmax,
    sparsemax,
)

__version__ = "0.1.0"
