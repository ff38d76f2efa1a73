"""hopfield-gag: Modern Hopfield dynamics, sparse normalizers, Anderson acceleration and geometry-aware
attention guidance (GAG, arXiv 2603.02531; PLADIS, arXiv 2503.07677).

Layers (data flows one way): ``normalizers`` -> ``hopfield`` -> ``theory``, ``anderson`` -> ``attention``.
``hopfield_gag.symbolic`` (sympy identities) is imported on demand: ``from hopfield_gag import symbolic``.
"""
from .anderson import (
    AA1Extrapolation,
    AdaptiveScale,
    AndersonResult,
    AndersonState,
    AndersonSolver,
    AndersonStatus,
    aa1_mixing,
    aa_adaptive_scale,
    aa_scale_from_retrievals,
    anderson,
    extrapolation_as_aa,
)
from .attention import GAGAttention, GAGParts, gag_attention, reference_gag_attention
from .hopfield import (
    BetaRegime,
    CapacityBound,
    FixedPointResult,
    beta_regime,
    capacity_constant,
    energy,
    energy_grad,
    exact_retrieval_margin,
    fixed_point,
    metastability_class,
    metastability_count,
    retrieval_error_bound,
    retrieval_jacobian,
    retrieval_map,
    retrieval_weights,
    separation,
    storage_capacity,
    stored_pattern_error_bound,
    tsallis_conjugate,
    tsallis_entropy,
)
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
from .theory import (
    LipschitzEstimate,
    SparseDenseDiscrepancy,
    consistency_margin,
    descent_margin,
    gag_map,
    gag_output,
    gag_update,
    lipschitz_estimate,
    parallel_margin,
    query_alignment_margin,
    sharpening_margin,
    sparse_dense_discrepancy,
    basin_alignment_margin,
    parallel_certificate,
    majorization_margin,
    crossing_certificate,
    norm_cap,
    GagContractionBound,
    gag_contraction_bound,
    noise_floor,
)

__version__ = "0.1.0"
