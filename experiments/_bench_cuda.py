"""The CUDA table of experiments/bench_attention.py (``--device cuda``): the fused Triton path against SDPA.

Contenders per shape and dtype, timed with CUDA events, once per round in turn (round-robin, so drift in
GPU clocks/load hits all alike), medians reported, plus the peak extra memory of one call
(``torch.cuda.max_memory_allocated`` above the level before the call):

  - SDPA: ``F.scaled_dot_product_attention`` (the dense baseline);
  - ours gag: ``gag_attention(method="gag")`` (paper defaults lam=10, eta=15, zeta=0) — the public op,
    argument checks included; for Lk <= 512 it dispatches to the fused Triton kernel, above to the torch path;
  - ours gag, kernel only: ``ops.triton_attention.fused_forward`` (the launch without the op's input checks);
  - ours pladis: ``gag_attention(method="pladis", lam=2)``;
  - PLADIS reference: SDPA for the dense output + ``entmax.entmax15(scores) @ V`` for the sparse one,
    blended d + 2 (s - d) (what a diffusers processor built on the entmax package does);
  - AdaSplash (deep-spin's alpha-entmax flash attention, PyPI ``adasplash``), if installed, **only on the
    shapes it supports**: it takes the sequence length from q and needs keys shaped like the queries
    (self-attention), a power-of-two length and no mask — on a cross-attention shape it would read past K and V.
    Its row is labelled "forward, sparse only": the sparse output alone (alpha = 1.5, non-causal), one half of
    what ours computes; elsewhere the table says why it was not run.

Shapes: SD1.5-style cross-attention at two resolutions, SDXL's cross-attention (2, 20, 1024, 77, 64), the
text partition of Flux's joint attention (1, 24, 4096, 512, 128: image queries over the 512 T5 tokens), and one
self-attention shape where AdaSplash can run.

Targets (issue 9): ours gag <= 1.5x SDPA at Lk = 77, and >= 5x faster than the PLADIS reference.
Without a CUDA device (or without triton) it exits with a message, not a traceback.
"""
from __future__ import annotations

import importlib.util
import statistics
import sys

import torch
import torch.nn.functional as F

SHAPES = [(2, 8, 1024, 77, 64), (2, 8, 4096, 77, 64), (2, 20, 1024, 77, 64), (1, 24, 4096, 512, 128),
          (2, 8, 1024, 1024, 64)]
ADASPLASH_ROW = "AdaSplash (forward, sparse only)"


def adasplash_supports(shape, masked: bool = False):
    """(True, "") when AdaSplash can run on (B, H, Lq, Lk, D), else (False, why): it reads the sequence length
    from q, so keys must be shaped like the queries (Lk == Lq), of a power-of-two length, with no mask."""
    b, h, lq, lk, d = shape
    if lk != lq:
        return False, f"cross-attention (Lk={lk} != Lq={lq}): AdaSplash needs keys shaped like the queries"
    if lq & (lq - 1):
        return False, f"length {lq} is not a power of two"
    if masked:
        return False, "a mask (AdaSplash takes none)"
    return True, ""
DTYPES = (torch.float16, torch.float32)


def _require_cuda():
    if not torch.cuda.is_available():
        raise SystemExit(
            "bench_attention --device cuda: no CUDA device visible to torch "
            f"(torch {torch.__version__}, cuda build {torch.version.cuda}); run it on a GPU machine."
        )
    if importlib.util.find_spec("triton") is None:
        raise SystemExit("bench_attention --device cuda: triton is not installed (pip install '.[gpu]').")


def _inputs(shape, dtype, seed=0):
    b, h, lq, lk, d = shape
    g = torch.Generator(device="cuda").manual_seed(seed)
    mk = lambda n: torch.randn(b, h, n, d, generator=g, device="cuda", dtype=torch.float32).to(dtype)  # noqa: E731
    return mk(lq), mk(lk), mk(lk)


def _contenders(q, k, v):
    import entmax as entmax_pkg

    from hopfield_gag import GagParams, gag_attention
    from hopfield_gag.ops import triton_attention as ta

    scale = q.shape[-1] ** -0.5
    shape = (*q.shape[:-1], k.shape[-2])

    def pladis_reference(lam=2.0):
        dense = F.scaled_dot_product_attention(q, k, v)
        p_sparse = entmax_pkg.entmax15((q @ k.transpose(-1, -2)).float() * scale, dim=-1).to(q.dtype)
        return dense + lam * (p_sparse @ v - dense)

    fns = {
        "SDPA": lambda: F.scaled_dot_product_attention(q, k, v),
        "ours gag": lambda: gag_attention(q, k, v, method="gag"),
        "ours pladis": lambda: gag_attention(q, k, v, method="pladis", lam=2.0),
        "PLADIS reference": pladis_reference,
    }
    if ta.triton_applies(q, k, v):
        fns["ours gag, kernel only"] = lambda: ta.fused_forward(q, k, v, None, shape, scale, GagParams())
    ok, _ = adasplash_supports((*q.shape[:-1], k.shape[-2], q.shape[-1]))
    if ok and importlib.util.find_spec("adasplash") is not None:
        from adasplash import adasplash

        fns[ADASPLASH_ROW] = lambda: adasplash(q, k, v, alpha=1.5, is_causal=False)
    return fns


def _time_ms(fn, reps):
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    stop.record()
    torch.cuda.synchronize()
    return start.elapsed_time(stop) / reps


def _peak_extra_mib(fn):
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def _gpu_load():
    try:
        return f"{torch.cuda.utilization()}% GPU utilization (nvml) before the run"
    except Exception as exc:  # pynvml absent or unsupported
        return f"GPU utilization unknown ({type(exc).__name__})"


def run(rounds: int = 9) -> list:
    """Print the CUDA tables; return the verdicts [(what, value, met)]."""
    _require_cuda()
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 for every contender
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, median of {rounds} rounds; {_gpu_load()}\n")
    verdicts = []
    for dtype in DTYPES:
        for shape in SHAPES:
            q, k, v = _inputs(shape, dtype)
            fns, failed = {}, {}
            for name, fn in _contenders(q, k, v).items():
                try:  # warm-up: compile the kernels, fill the caches; a contender that fails is reported
                    fn()
                    torch.cuda.synchronize()
                    fns[name] = fn
                except Exception as exc:  # noqa: BLE001 (third-party kernels: report, do not abort the table)
                    failed[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:80]}"
            reps = {name: max(1, int(20.0 / max(_time_ms(fn, 3), 1e-3))) for name, fn in fns.items()}  # ~20 ms
            samples = {name: [] for name in fns}
            for _ in range(rounds):
                for name, fn in fns.items():
                    samples[name].append(_time_ms(fn, reps[name]))
            med = {name: statistics.median(xs) for name, xs in samples.items()}
            mem = {name: _peak_extra_mib(fn) for name, fn in fns.items()}
            sdpa = med["SDPA"]
            print(f"shape (B,H,Lq,Lk,D) = {shape}, {str(dtype).replace('torch.', '')}")
            print(f"  {'contender':26s} {'median ms':>10s} {'/ SDPA':>8s} {'peak extra MiB':>15s}")
            for name, ms in med.items():
                print(f"  {name:26s} {ms:10.3f} {ms / sdpa:8.2f} {mem[name]:15.1f}")
            for name, why in failed.items():
                print(f"  {name:26s} failed: {why}")
            ok, why = adasplash_supports(shape)
            if not ok:
                print(f"  {ADASPLASH_ROW:26s} not run: {why}")
            ratio = med["ours gag"] / sdpa
            ref_ratio = med["PLADIS reference"] / med["ours gag"]
            print(f"  PLADIS reference / ours gag = {ref_ratio:.2f}\n")
            if shape[3] == 77 and shape[1] == 8:  # the issue-9 targets were set on these shapes
                tag = f"{shape} {str(dtype).replace('torch.', '')}"
                verdicts.append((f"{tag}: gag / SDPA <= 1.5", ratio, ratio <= 1.5))
                verdicts.append((f"{tag}: PLADIS ref / gag >= 5", ref_ratio, ref_ratio >= 5.0))
    print("targets (CUDA)")
    for what, value, ok in verdicts:
        print(f"  {what:52s} measured {value:7.2f}   {'MET' if ok else 'MISSED'}")
    return verdicts


if __name__ == "__main__":
    run(int(sys.argv[1]) if len(sys.argv) > 1 else 9)
