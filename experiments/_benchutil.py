"""Shared measurement helpers for the benchmark scripts (Linux).

* :class:`Contention` measures how much CPU *other* processes used while a benchmark ran:
  (busy jiffies of all CPUs - our own CPU time) / (elapsed CPU capacity). With 2 threads on 2 cores,
  every parallel region waits for a descheduled thread, so a run with more than a few percent of foreign
  load measures contention, not code. (The load average cannot tell: it counts the benchmark itself.)
* :func:`round_robin_medians` times callables once per round, in turn, so a drift in machine load hits all
  of them alike, and returns median milliseconds.
* :func:`alone_medians` times each callable alone and warm: a warm-up call, then its rounds back to back, one
  callable after the other (the order is a parameter: run both to see what order costs).
* :class:`Burner` adds a known foreign load (busy processes) for measuring how a kernel degrades under load.
* :func:`print_targets` prints the verdict lines (MET / MISSED) every script ends with.
* :func:`machine_line` names the CPU and the instruction sets that decide which paths run (ours and torch's):
  a ratio to SDPA is a statement about one machine (SDPA's bf16 runs on AMX tiles where they exist).
* :func:`peak_rss_above_baseline` runs a callable and returns the peak resident memory above the level
  before it, from ``VmHWM`` after resetting it through ``/proc/self/clear_refs``. (``ru_maxrss`` is
  inherited across fork and kept across ``execve``, so in a child process it starts at the parent's peak.)
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time


# the CPU features that change which code runs: ours (AVX2 / AVX-512 tiles, AMX-BF16 for bf16) and oneDNN's
# (AVX512-BF16 and AMX products behind torch's bf16 matmul and SDPA)
_FEATURES = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_fp16")


def machine_line(cpuinfo: str = "/proc/cpuinfo") -> str:
    """One line naming the CPU model (family and model numbers: a virtual machine's model name can be as bare as
    "AMD EPYC") and which of :data:`_FEATURES` it has, from the first processor of ``cpuinfo`` (Linux's format;
    an unreadable file gives "unknown CPU")."""
    model, family, number, flags = "unknown CPU", "?", "?", set()
    try:
        with open(cpuinfo) as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model == "unknown CPU":
                    model = value.strip()
                elif key == "cpu family" and family == "?":
                    family = value.strip()
                elif key == "model" and number == "?":
                    number = value.strip()
                elif key == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    have = [f for f in _FEATURES if f in flags]
    return f"{model} (family {family}, model {number}); {', '.join(have) if have else 'none'} of {', '.join(_FEATURES)}"


def _cpu_jiffies():
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


class Contention:
    """Context manager; after exit, ``.foreign`` is the fraction of CPU capacity used by other processes.

    Use it with ``with`` (exception-safe): ``with Contention() as load: ...; print(load.report())``."""

    def __enter__(self):
        self._busy0, self._total0 = _cpu_jiffies()
        self._self0 = self._own_cpu()
        return self

    @staticmethod
    def _own_cpu() -> float:
        # our process and the children we waited for (e.g. a memory-measurement subprocess)
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def __exit__(self, *exc):
        busy1, total1 = _cpu_jiffies()
        hz = os.sysconf("SC_CLK_TCK")
        ours = (self._own_cpu() - self._self0) * hz
        total = max(total1 - self._total0, 1)
        self.foreign = max(0.0, (busy1 - self._busy0 - ours) / total)
        return False

    def percent(self) -> str:
        return f"{100 * self.foreign:.0f}%"

    def report(self, threshold: float = 0.05) -> str:
        line = f"other processes used {100 * self.foreign:.1f}% of the CPUs during the run"
        if self.foreign > threshold:
            line += "\nWARNING: the machine was busy; these ratios are not a valid measurement"
        return line


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def peak_rss_above_baseline(fn) -> tuple[int, object]:
    """Run ``fn()``; return (peak resident KiB above the resident size before it, fn's result)."""
    base = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset VmHWM to the current resident size
    out = fn()
    return _status_kib("VmHWM") - base, out


def round_robin_medians(fns: dict, rounds: int, rounds_for: dict | None = None, clock: str = "wall") -> dict:
    """Median time in ms of each callable over ``rounds`` rounds (one call each per round, in turn), after one
    warm-up call each. ``rounds_for`` caps the rounds of slow contenders by name.

    ``clock="wall"`` (default) times elapsed wall time, the figure the targets are stated in. ``clock="cpu"``
    times this process's CPU time (all its threads): the work done, without the time spent waiting for a
    descheduled thread. On a machine shared with other jobs it is the more repeatable figure; with one
    thread it equals wall time on a quiet machine.
    """
    rounds_for = rounds_for or {}
    timer = time.perf_counter if clock == "wall" else time.process_time
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for r in range(rounds):
        for name, fn in fns.items():
            if r >= rounds_for.get(name, rounds):
                continue
            t0 = timer()
            fn()
            times[name].append(timer() - t0)
    return {name: statistics.median(ts) * 1e3 for name, ts in times.items()}


def alone_medians(fns: dict, rounds: int, clock: str = "wall") -> dict:
    """Median time in ms of each callable timed alone and warm: one warm-up call, then ``rounds`` calls back
    to back, before the next callable starts (in the dict's order). Nothing else runs between its calls, so
    caches, the allocator's free lists and the thread pool are in the state the callable itself leaves."""
    timer = time.perf_counter if clock == "wall" else time.process_time
    out = {}
    for name, fn in fns.items():
        fn()
        ts = []
        for _ in range(rounds):
            t0 = timer()
            fn()
            ts.append(timer() - t0)
        out[name] = statistics.median(ts) * 1e3
    return out


class Burner:
    """Context manager: ``n`` busy-looping child processes (a known foreign load) for the duration of the block.

    Enter it *outside* :class:`Contention` so that the burners count as foreign load (their CPU time is
    charged to us only once they are reaped, at this block's exit)."""

    def __init__(self, n: int):
        self.n = n
        self._procs = []

    def __enter__(self):
        # each burner spins only while its parent lives: a benchmark killed mid-row (SIGTERM/SIGKILL skip
        # __exit__) must not leave a busy process behind to load every later measurement
        spin = f"import os\nwhile os.getppid() == {os.getpid()}:\n    for _ in range(200000): pass"
        for _ in range(self.n):
            self._procs.append(subprocess.Popen([sys.executable, "-c", spin]))
        time.sleep(0.2)  # let them start spinning
        return self

    def __exit__(self, *exc):
        for p in self._procs:
            p.kill()
        for p in self._procs:
            p.wait()
        self._procs = []
        return False


def print_targets(verdicts, threads: int | None = None, clock: str = "wall", stated_threads=(1, 2)) -> bool:
    """Print ``targets`` and one line per verdict ``(what, measured, ok)``; ``measured`` a number or a string.
    A run at a thread count or clock the targets are not stated for is marked a proxy run. Returns True when
    every target was met."""
    proxy = (threads is not None and threads not in stated_threads) or clock != "wall"
    print("targets" + (f"  (proxy run: {threads} thread(s), {clock} clock; the targets are stated for "
                       f"{'/'.join(map(str, stated_threads))} thread(s), wall clock)" if proxy else ""))
    width = max((len(w) for w, _, _ in verdicts), default=0)
    for what, value, ok in verdicts:
        shown = f"{value:7.2f}" if isinstance(value, (int, float)) else str(value)
        print(f"  {what:{width}s}  measured {shown}   {'MET' if ok else 'MISSED'}")
    return all(ok for _, _, ok in verdicts)
