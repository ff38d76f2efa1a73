"""hopfield-gag: Modern Hopfield dynamics, sparse normalizers, Anderson acceleration and geometry-aware
attention guidance (GAG, arXiv 2603.02531; PLADIS, arXiv 2503.07677).

Layers (data flows one way: a layer imports only layers with a lower or equal number; the numbering is
stated once, in :mod:`hopfield_gag._layers`, and ``tests/test_layout.py`` checks this table against it):

=====  ===============  ===================================================================================
layer  subpackage       what it holds
=====  ===============  ===================================================================================
1      ``ops``          exact normalizers, ``GagParams`` and the codes, the CPU and Triton kernels, ``combine``
2      ``hopfield``     Hopfield dynamics (energies, retrieval, fixed points) and Ramsauer's diagnostics
3      ``solvers``      Anderson acceleration; plain iteration is depth 0
3      ``theory``       sparse-dense discrepancy, margins, certificates, the GAG map, symbolic identities
4      ``guidance``     ``gag_attention``, the AA(1) readings, the joint rule, the float64 oracle
5      ``adapters``     attention calls of real models to attention functions, ``apply_gag``, hooks, guiders
5      ``capture``      attention q/k/v of real models into a crash-safe ``ActivationStore``
6      ``models``       the shipped diffusion models, sampling, judges, the demo
7      ``studies``      map-reduce studies over stores and seeds, the figures
8      ``selfcheck``    the numerical self-check battery
9      ``cli``          ``hopfield-gag``
=====  ===============  ===================================================================================

``hopfield_gag.theory.symbolic`` (sympy identities) is imported on demand; ``hopfield_gag.symbolic`` also
resolves to it lazily.
"""
from .solvers import (
    AndersonResult,
    AndersonState,
    AndersonSolver,
    AndersonStatus,
    FixedPointResult,
    SolverResult,
    SolverStatus,
    anderson,
    fixed_point,
)
from .guidance import (
    AA1Extrapolation,
    AdaptiveScale,
    GAGAttention,
    GAGParts,
    aa1_mixing,
    aa_adaptive_scale,
    aa_scale_from_retrievals,
    extrapolation_as_aa,
    gag_attention,
    reference_gag_attention,
)
from .hopfield import (
    BetaRegime,
    CapacityBound,
    beta_regime,
    capacity_constant,
    energy,
    energy_grad,
    exact_retrieval_margin,
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
from .ops.combine import Combined, combine
from .ops.codes import Method, Status
from .ops.params import GagParams
from .ops import (
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
from .ops.triton_attention import triton_applies, triton_gag_attention  # triton itself loads on first launch
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
    GagIterationVerdict,
    gag_iteration_verdict,
    gag_ray_map,
    ParallelBounds,
    parallel_bounds,
    parallel_certificate_sharp,
    parallel_norm_certificate,
    EquiangularFit,
    equiangular_fit,
    perturbative_parallel_certificate,
    sign_flip_margin,
    flipped_tokens,
    gag_layer_deviation_bound,
    accumulated_deviation_bound,
)

# ``hopfield_gag.capture`` stays the subpackage (its ``capture`` function: ``from hopfield_gag.capture import capture``)
from .capture import ActivationStore, import_tensors

__version__ = "0.1.0"


def __getattr__(name):
    # sympy is slow to import: the symbolic identities load on first access only
    if name == "symbolic":
        from .theory import symbolic

        return symbolic
    # the diffusers integration (optional extra): imported on first use
    if name in ("apply_gag", "install_attention_fn", "list_attention_layers", "GuidedAttention"):
        from . import adapters

        return getattr(adapters, name)
    raise AttributeError(f"module 'hopfield_gag' has no attribute {name!r}")
