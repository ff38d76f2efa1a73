"""Train the shipped digit diffusion models (flow matching) and write their weights and model card.

    python experiments/train_digits.py --model dit     # -> hopfield_gag/models/weights/dit-digits.*
    python experiments/train_digits.py --model unet    # -> hopfield_gag/models/weights/unet-digits.*
    python experiments/train_digits.py --model dit --card-only   # re-evaluate and rewrite the card
    python experiments/train_digits.py --model judge   # -> hopfield_gag/models/weights/judge.*

Deterministic under --seed (single thread; the data order, noise, t and condition dropout come from one
torch generator). Training stops at --steps or when the process CPU time reaches --cpu-minutes (the card
records which). Loss: mean squared error between the predicted and true velocity x1 - eps at
x_t = (1 - t) eps + t x1, t ~ U(0, 1); 10% of labels are replaced by the null prompt (CFG). The weights
written are the EMA of the parameters.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hopfield_gag.models import registry  # noqa: E402
from hopfield_gag.models.conditioning import NULL_CLASS  # noqa: E402
from hopfield_gag.models.data import train_test_split  # noqa: E402

WEIGHTS = ROOT / "hopfield_gag" / "models" / "weights"


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except Exception:  # noqa: BLE001 - a card without a commit is still useful
        return "unknown"


def train(args) -> None:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    name = f"{args.model}-digits"
    model = registry.build(name)
    ema = copy.deepcopy(model).requires_grad_(False)
    n_params = sum(p.numel() for p in model.parameters())
    (x_train, y_train), _ = train_test_split()
    x_train = 2.0 * x_train - 1.0
    n = len(y_train)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    warmup = max(1, args.steps // 20)

    def lr_at(step):  # linear warmup, cosine decay to 10%
        if step < warmup:
            return args.lr * (step + 1) / warmup
        frac = (step - warmup) / max(1, args.steps - warmup)
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))

    log_path = WEIGHTS / f"{name}.train.jsonl"
    log = open(log_path, "w")
    print(f"{name}: {n_params} parameters, {n} training images, {args.steps} steps of batch {args.batch}", flush=True)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    perm, pos, window, curve = torch.randperm(n, generator=gen), 0, [], []
    stopped_by = "steps"
    step = 0
    for step in range(args.steps):
        if pos + args.batch > n:
            perm, pos = torch.randperm(n, generator=gen), 0
        idx = perm[pos:pos + args.batch]
        pos += args.batch
        x1, y = x_train[idx], y_train[idx].clone()
        y[torch.rand(len(y), generator=gen) < args.p_uncond] = NULL_CLASS
        eps = torch.randn(x1.shape, generator=gen)
        t = torch.rand(len(y), generator=gen)
        xt = (1 - t)[:, None, None, None] * eps + t[:, None, None, None] * x1
        loss = (model(xt, t, y) - (x1 - eps)).pow(2).mean()
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - decay)
        window.append(loss.item())
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            rec = dict(step=step + 1, loss=sum(window) / len(window), lr=lr_at(step), cpu_s=round(cpu, 1), wall_s=round(wall, 1))
            curve.append(rec)
            window = []
            log.write(json.dumps(rec) + "\n")
            log.flush()
            print(json.dumps(rec), flush=True)
            if cpu > 60 * args.cpu_minutes:
                stopped_by = f"cpu budget ({args.cpu_minutes} min)"
                break
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    log.close()
    meta = dict(
        name=name, parameters=n_params, steps_done=step + 1, steps=args.steps, stopped_by=stopped_by, batch=args.batch,
        lr=args.lr, ema=args.ema, p_uncond=args.p_uncond, seed=args.seed, threads=args.threads,
        cpu_seconds=round(cpu, 1), wall_seconds=round(wall, 1), final_loss=curve[-1]["loss"] if curve else None,
        commit=_commit(), command="python experiments/train_digits.py " + " ".join(sys.argv[1:]),
        loadavg_at_end=os.getloadavg(),
    )
    registry.save(name, ema, meta, WEIGHTS)
    print(f"saved {name}: cpu {cpu:.0f}s wall {wall:.0f}s loss {meta['final_loss']:.4f}", flush=True)


def train_and_save_judge(args) -> int:
    from safetensors.torch import save_file

    from hopfield_gag.models.judge import train_judge

    torch.set_num_threads(args.threads)
    cpu0 = time.process_time()
    net, record = train_judge(seed=args.seed)
    record.update(cpu_seconds=round(time.process_time() - cpu0, 1), commit=_commit(),
                  command="python experiments/train_digits.py " + " ".join(sys.argv[1:]))
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(WEIGHTS / "judge.safetensors"))
    (WEIGHTS / "judge.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["dit", "unet", "judge"], required=True)
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default: dit 1200, unet 800)")
    p.add_argument("--batch", type=int, default=None, help="default: dit 64, unet 32")
    p.add_argument("--lr", type=float, default=None, help="default: dit 2e-3, unet 1e-3")
    p.add_argument("--ema", type=float, default=0.998)
    p.add_argument("--p-uncond", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cpu-minutes", type=float, default=14.5, help="stop when the process CPU time exceeds this")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--card-only", action="store_true", help="only (re)write the model card from the shipped weights")
    args = p.parse_args(argv)
    if args.steps is None:
        args.steps = 1200 if args.model == "dit" else 800
    if args.batch is None:
        args.batch = 64 if args.model == "dit" else 32
    if args.lr is None:
        args.lr = 2e-3 if args.model == "dit" else 1e-3
    if args.model == "judge":
        return train_and_save_judge(args)
    if not args.card_only:
        train(args)
    from hopfield_gag.models.card import write_model_card

    print(write_model_card(f"{args.model}-digits", WEIGHTS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
