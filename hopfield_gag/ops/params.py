r"""The parameters of a guided attention call, validated once: :class:`GagParams`.

Every layer that runs or reasons about the guidance rule (the op :func:`hopfield_gag.gag_attention`, the
float64 oracle, the Triton and fused CPU entries, :func:`hopfield_gag.ops.combine.combine`, the theory's
``gag_output``, the adapters) takes one :class:`GagParams` instead of a dozen keyword arguments, and the
defaults (the paper's :math:`\lambda = 10`, :math:`\eta = 15`, :math:`\zeta = 0`; :math:`\alpha = 1.5`;
``aa_range = (0, 3)``) are written here and nowhere else. The public keyword APIs build one with
:meth:`GagParams.from_kwargs`.

================ ======================= =================================================================
field            default                 meaning (formulas: :mod:`hopfield_gag.ops.combine`)
================ ======================= =================================================================
``method``       ``"gag"``               ``"dense"``, ``"sparse"``, ``"pladis"``, ``"gag"``, ``"aa"``
``lam``          10.0                    :math:`\lambda \ge 0` of ``gag`` and ``pladis``
``eta``          15.0                    norm cap :math:`\eta > 0` of ``gag``; ``None`` = no cap
``zeta``         0.0                     weight :math:`\zeta \in [0, 1]` of :math:`\Delta_\perp` in ``gag``
``alpha``        1.5                     entmax order :math:`\alpha > 1` of the sparse branch
``strength``     1.0                     :math:`t \ge 0` in :math:`d + t(o - d)`; 0 = the stock attention
``parallel``     ``"paper"``             ``gag``'s parallel rule: ``"paper"`` or ``"positive"``
``aa_range``     (0.0, 3.0)              clamp range (lo, hi), lo < hi, of ``aa``'s per-token scale
``scale``        None                    score scale > 0; None = :math:`1/\sqrt D` (SDPA's default)
``chunk_size``   None                    queries per chunk of the chunked paths; None = from the budget
``memory_budget`` 256 MiB                bytes of score-sized temporaries per chunk (an int >= 1)
================ ======================= =================================================================

The last two choose how the op runs, not what it computes.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from .._validation import check_choice, check_int, check_scalar, default_scale
from .codes import METHOD_NAMES, PARALLEL_NAMES, Method, Parallel, method_code

__all__ = ["GagParams", "DEFAULT_MEMORY_BUDGET", "PARAM_NAMES"]

DEFAULT_MEMORY_BUDGET = 256 * 2**20  # bytes of score-sized temporaries per chunk


@dataclass(frozen=True)
class GagParams:
    r"""The validated, immutable parameters of a guided attention call (module docstring for the table).

    Construction validates every field and stores it normalized (floats as ``float``, ``aa_range`` as a
    tuple of two floats); a bad value raises ``ValueError`` (or ``TypeError`` for a non-number such as
    ``lam="10"`` or ``lam=True``) naming the field. Change fields with :meth:`replace` (validated again).
    """

    method: str = "gag"
    lam: float = 10.0
    eta: float | None = 15.0
    zeta: float = 0.0
    alpha: float = 1.5
    strength: float = 1.0
    parallel: str = "paper"
    aa_range: tuple[float, float] = (0.0, 3.0)
    scale: float | None = None
    chunk_size: int | None = None
    memory_budget: int = DEFAULT_MEMORY_BUDGET

    def __post_init__(self):
        set_ = object.__setattr__
        check_choice("method", self.method, METHOD_NAMES)
        check_choice("parallel", self.parallel, PARALLEL_NAMES)
        set_(self, "lam", check_scalar("lam", self.lam, ge=0.0))
        if self.eta is not None:
            set_(self, "eta", check_scalar("eta", self.eta, gt=0.0))
        set_(self, "zeta", check_scalar("zeta", self.zeta, ge=0.0, le=1.0))
        set_(self, "alpha", check_scalar("alpha", self.alpha, gt=1.0))
        set_(self, "strength", check_scalar("strength", self.strength, ge=0.0))
        if self.scale is not None:
            set_(self, "scale", check_scalar("scale", self.scale, gt=0.0))
        set_(self, "chunk_size", check_int("chunk_size", self.chunk_size, ge=1, allow_none=True))
        set_(self, "memory_budget", check_int("memory_budget", self.memory_budget, ge=1))
        set_(self, "aa_range", _check_range("aa_range", self.aa_range))

    # ------------------------------------------------------------------------------------------ building

    @classmethod
    def from_kwargs(cls, params: "GagParams | None" = None, **kwargs) -> "GagParams":
        """A :class:`GagParams` from keyword arguments (the public keyword APIs): ``params`` (or the defaults)
        with ``kwargs`` replaced. Unknown names raise ``TypeError``; ``None`` values of fields whose
        default is not None keep the default (so ``lam=None`` means "the default")."""
        unknown = set(kwargs) - set(PARAM_NAMES)
        if unknown:
            raise TypeError(f"unknown guidance parameter(s) {sorted(unknown)}; expected some of {PARAM_NAMES}")
        if params is not None and not isinstance(params, GagParams):
            raise TypeError(f"params must be a GagParams or None, got {type(params).__name__}")
        base = params if params is not None else _DEFAULTS
        changes = {k: v for k, v in kwargs.items() if v is not None or k in _NONE_OK}
        return base.replace(**changes) if changes else base

    def replace(self, **changes) -> "GagParams":
        """A copy with ``changes`` applied (validated)."""
        return dataclasses.replace(self, **changes)

    def as_kwargs(self) -> dict:
        """The fields as a dict (for keyword APIs and ``repr``)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    # ------------------------------------------------------------------------------------------ derived

    @property
    def method_code(self) -> Method:
        """The kernels' code of ``method`` (:class:`hopfield_gag.ops.codes.Method`)."""
        return method_code(self.method)

    @property
    def parallel_code(self) -> Parallel:
        """The kernels' code of ``parallel``."""
        return Parallel[self.parallel.upper()]

    @property
    def eta_value(self) -> float:
        """``eta`` as the kernels take it: ``inf`` for no cap (the cap never binds)."""
        return math.inf if self.eta is None else self.eta

    @property
    def is_off(self) -> bool:
        """True when the call is the stock attention itself (``strength == 0`` or ``method == "dense"``)."""
        return self.strength == 0.0 or self.method == "dense"

    def beta(self, d: int) -> float:
        """The resolved score scale for feature dim ``d``: ``scale`` or :math:`1/\\sqrt d`."""
        return default_scale(self.scale, d)


def _check_range(name: str, value) -> tuple[float, float]:
    """A pair (lo, hi) of finite reals with lo < hi."""
    try:
        n = len(value)
    except TypeError:
        n = -1
    if n != 2 or isinstance(value, str):
        raise ValueError(f"{name} must be a pair (lo, hi) of numbers with lo < hi, got {value!r}")
    lo, hi = check_scalar(f"{name}[0]", value[0]), check_scalar(f"{name}[1]", value[1])
    if not lo < hi:
        raise ValueError(f"{name} must be (lo, hi) with lo < hi, got {value!r}")
    return lo, hi


PARAM_NAMES = tuple(f.name for f in dataclasses.fields(GagParams))
_NONE_OK = ("eta", "scale", "chunk_size")  # fields whose None is a value, not "the default"
_DEFAULTS = GagParams()
