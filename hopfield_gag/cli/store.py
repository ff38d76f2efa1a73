"""``hopfield-gag store info DIR`` / ``hopfield-gag store verify DIR``: inspect or check an activation store
(:class:`hopfield_gag.capture.ActivationStore`; its module docstring states what each check guarantees)."""
from __future__ import annotations

import argparse
import json
import sys

from ._common import UsageError, human


def _open(path):
    from ..capture.store import ActivationStore, StoreError

    try:
        return ActivationStore(path)
    except StoreError as exc:  # a damaged or foreign manifest is bad input: one line, status 2
        raise UsageError(str(exc)) from None


def _compact(steps) -> str:
    if not steps:
        return "-"
    if steps == list(range(steps[0], steps[-1] + 1)):
        return f"{steps[0]}..{steps[-1]} ({len(steps)})"
    return ", ".join(map(str, steps))


def cmd_store_info(args: argparse.Namespace) -> int:
    """The manifest summary (``--json`` for machine-readable output); reads the manifest only."""
    info = _open(args.dir).info()
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    rows = [("path", info["path"]), ("model", info["model_id"]), ("config hash", info["config_hash"][:16]),
            ("complete", "yes" if info["complete"] else "no (interrupted: resume=True continues it)"),
            ("shards", info["shards"]), ("records", info["records"]), ("bytes", human(info["bytes"])),
            ("dtypes", ", ".join(info["dtypes"]) or "-"), ("steps", _compact(info["steps"])),
            ("branches", ", ".join(info["branches"]) or "-"), ("layers", len(info["layers"]))]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    for name in info["layers"]:
        print(f"{'':<{width}}  {name}")
    return 0


def cmd_store_verify(args: argparse.Namespace) -> int:
    """Check every shard (size, header, SHA-256); prints ``BAD <shard>: <problem>`` per bad shard and exits
    with status 2 naming how many failed."""
    store = _open(args.dir)
    report = store.verify(raise_on_error=False)
    if isinstance(report, dict):
        for name in sorted(report):
            print(f"BAD  {report[name]}")
        sys.stdout.flush()
        raise UsageError(f"store verify: {len(report)} of {len(store.shards)} shards failed "
                         f"({', '.join(sorted(report))}); the others are readable")
    print(f"ok: {report.shards} shards, {report.records} records, {human(report.bytes)}"
          f"{'' if store.complete else ' (capture incomplete: resume=True continues it)'}")
    return 0


def add_parsers(sub) -> None:
    """Register ``store info`` and ``store verify``."""
    s = sub.add_parser("store", help="inspect or verify an activation store",
                       description="Inspect (info) or check (verify) an activation store directory.")
    ssub = s.add_subparsers(dest="store_command", metavar="<store command>", required=True)
    pi = ssub.add_parser("info", help="summary of a store's manifest (validated; shards are not read)",
                         description="Print the summary of a store's manifest: model, shards, records, bytes, "
                         "steps, layers. The manifest is validated; shards are not read (use verify).")
    pi.add_argument("dir", help="the store directory")
    pi.add_argument("--json", action="store_true", help="print the summary as JSON")
    pi.set_defaults(handler=cmd_store_info)
    pv = ssub.add_parser("verify", help="check every shard's size, header and SHA-256 (exit status 2 if any is bad)",
                         description="Check every shard against the manifest: a regular file inside the store, "
                         "its size, its SHA-256 and its header (tensor keys, shapes, dtypes). Prints one BAD line "
                         "per bad shard and exits with status 2 if any.")
    pv.add_argument("dir", help="the store directory")
    pv.set_defaults(handler=cmd_store_verify)
