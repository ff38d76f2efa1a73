"""Build-once loader for the C kernel: the row normalizers (``entmax_rows.c``: exact alpha-entmax rows, and
both maps of a chunk of rows for :mod:`.fused`) and the fused guided-attention forward (``gag_forward.c``:
the per-token combination and the one-call forward of :mod:`.fused`). ``gag_forward.c`` includes
``entmax_rows.c`` (one translation unit, so the row functions inline into the fused loop); both are hashed.
The integer codes (methods, status bits, entmax kinds) are :mod:`.codes`' values passed as ``-D`` flags,
also part of the cache key.

Why a C kernel: the sort-free threshold search needs ~30 elementwise passes over the score tensor in
eager PyTorch, each materializing a temporary; per row in C the same work stays in L1 cache. The kernel is
compiled on first use with the system C compiler (``cc``/``gcc``, OpenMP), cached under
``$HOPFIELD_GAG_CACHE`` (default ``~/.cache/hopfield_gag``) keyed by the source hash and the machine, and
loaded with :mod:`ctypes`. ``-fno-trapping-math`` (no FP exceptions are ever read; values and NaN
propagation are unchanged, unlike ``-ffast-math``) lets the compiler if-convert the masked reductions into
SIMD code: without it the threshold loops stay scalar and a row of 77 costs 2x as much. If no compiler is available, or ``HOPFIELD_GAG_NO_KERNEL=1`` is set, callers
fall back to the vectorized PyTorch implementation of the same algorithm.
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path

from .codes import c_defines

_DIR = Path(__file__).parent
_SOURCES = (_DIR / "entmax_rows.c", _DIR / "gag_forward.c")  # every file of the build (the cache key)
_MAIN = _SOURCES[-1]  # the translation unit handed to the compiler (it includes the others)
_FLAGS = ("-O3", "-march=native", "-fno-trapping-math", "-fopenmp", "-shared", "-fPIC")  # part of the cache key
_DEFINES = c_defines()  # the codes of ops/codes.py, the only definition the C sources see
_lock = threading.Lock()
_lib = None
_tried = False


def _cache_dir() -> Path:
    root = os.environ.get("HOPFIELD_GAG_CACHE") or os.path.join(Path.home(), ".cache", "hopfield_gag")
    return Path(root) / "kernels"


def _machine_tag() -> str:
    # -march=native code is only valid on the CPU it was built for: key the cache by CPU model.
    model = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith(("model name", "flags")):
                    model += line
    except OSError:
        pass
    return hashlib.sha256((platform.machine() + model + sys.platform).encode()).hexdigest()[:12]


def _compile(target: Path, flags: tuple[str, ...] = _FLAGS) -> None:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise RuntimeError("no C compiler found (set CC)")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        out = Path(tmp) / target.name
        cmd = [cc, *flags, *_DEFINES, str(_MAIN), "-o", str(out), "-lm"]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"compiling the C kernel failed: {' '.join(cmd)}\n{res.stderr}")
        os.replace(out, target)  # atomic: concurrent builders never see a half-written library


def _build_key() -> str:
    """Hash of every source, the compiler flags and the code defines: a change to any gives a new build."""
    h = hashlib.sha256()
    for path in _SOURCES:
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    h.update(" ".join(_FLAGS + _DEFINES).encode())
    return h.hexdigest()[:12]


def load():
    """Return the loaded kernel library, or ``None`` if it cannot be built here (cached after the first try)."""
    global _lib, _tried
    if _tried:
        return _lib
    with _lock:
        if _tried:
            return _lib
        _tried = True
        if os.environ.get("HOPFIELD_GAG_NO_KERNEL"):
            return None
        tag = _build_key() + "-" + _machine_tag()
        target = _cache_dir() / f"hg_kernel-{tag}.so"
        try:
            if not target.exists():
                _compile(target)
            lib = ctypes.CDLL(str(target))
        except (OSError, RuntimeError) as exc:
            warnings.warn(f"hopfield_gag: entmax C kernel unavailable, using the PyTorch path ({exc})")
            return None
        _lib = _bind(lib)
        return _lib


def _bind(lib):
    """Declare the argument and result types of the kernel's entry points on a loaded library; returns it."""
    for name, ctype in (("entmax_rows_f32", ctypes.c_float), ("entmax_rows_f64", ctypes.c_double)):
        fn = getattr(lib, name)
        fn.restype = ctypes.c_int64
        fn.argtypes = [
            ctypes.POINTER(ctype),
            ctypes.POINTER(ctype),
            ctypes.c_int64,
            ctypes.c_int64,
            ctypes.c_double,
            ctypes.c_int,
            ctypes.c_double,
            ctypes.c_int,
        ]
    for name, ctype in (("dual_rows_f32", ctypes.c_float), ("dual_rows_f64", ctypes.c_double)):
        fn = getattr(lib, name)
        fn.restype = ctypes.c_int64
        fn.argtypes = [ctypes.POINTER(ctype), ctypes.POINTER(ctype), ctypes.c_int64, ctypes.c_int64,
                       ctypes.c_int64, ctypes.c_double, ctypes.c_int, ctypes.c_double, ctypes.c_int]
    for name, ctype in (("combine_rows_f32", ctypes.c_float), ("combine_rows_f64", ctypes.c_double)):
        fn = getattr(lib, name)
        fn.restype = None
        fn.argtypes = [ctypes.POINTER(ctype), ctypes.POINTER(ctype), ctypes.c_int64, ctypes.c_int64,
                       ctypes.c_int64, ctypes.c_int64, ctypes.c_int, ctypes.c_int, ctypes.c_double,
                       ctypes.c_double, ctypes.c_double, ctypes.c_double, ctypes.c_int]
    for name in ("gag_forward_f32", "gag_forward_bf16", "gag_forward_f16"):  # by the storage type of q, k, v, out
        fn = getattr(lib, name)
        fn.restype = ctypes.c_int64
        # q, k, v, mask, moff; msi; out; G, Lq, Lk, D, Dv; beta, alpha; kind; hi0; method, parallel;
        # lam, eta, zeta, strength, aa_lo, aa_hi; nthreads
        fn.argtypes = ([ctypes.c_void_p] * 5 + [ctypes.c_int64, ctypes.c_void_p] + [ctypes.c_int64] * 5
                       + [ctypes.c_double] * 2 + [ctypes.c_int, ctypes.c_double] + [ctypes.c_int] * 2
                       + [ctypes.c_double] * 6 + [ctypes.c_int])
    lib.hg_bf16_tiles.argtypes = []
    lib.hg_bf16_tiles.restype = ctypes.c_int
    lib.hg_set_max_iter.argtypes = [ctypes.c_int]
    lib.hg_set_max_iter.restype = None
    lib.hg_get_max_iter.argtypes = []
    lib.hg_get_max_iter.restype = ctypes.c_int
    return lib


@contextlib.contextmanager
def iteration_limit(n: int):
    """Test-only hook: cap the kernel's threshold iterations at ``n`` inside the block (process-wide), so
    tests can reach the "limit hit" path that real rows never reach (they converge in a few iterations)."""
    lib = load()
    if lib is None:
        raise RuntimeError("the entmax C kernel is not available")
    old = lib.hg_get_max_iter()
    lib.hg_set_max_iter(int(n))
    try:
        yield
    finally:
        lib.hg_set_max_iter(old)
