"""Train the ``digit-grid`` models (flow matching on 24x24 compositional canvases) and write weights + cards.

    python experiments/train_grid.py --model dit        # -> hopfield_gag/models/weights/dit-grid.*
    python experiments/train_grid.py --model unet       # -> unet-grid.*
    python experiments/train_grid.py --model sd3        # -> sd3-grid.*
    python experiments/train_grid.py --model student    # reflow + distillation of dit-grid -> dit-grid-student.*
    python experiments/train_grid.py --model undertrained --from-checkpoint CKPT   # ship a saved DiT checkpoint
    python experiments/train_grid.py --model canvas-features   # the judge's canvas feature extractor
    python experiments/train_grid.py --model dit --card-only   # re-evaluate and rewrite a card

Deterministic under --seed and --threads (the canvases, pair order, noise, t and condition dropout come from
seeded torch generators). Training stops at --steps or when the process CPU time reaches --cpu-minutes (the
record says which). Loss: mean squared error between predicted and true velocity x1 - eps at
x_t = (1 - t) eps + t x1, t ~ U(0, 1); 10% of prompts are replaced by the all-padding null prompt (CFG).
Written weights are the EMA of the parameters. ``--ckpt-every N`` also writes the EMA weights every N steps to
``--ckpt-dir`` (outside the package), which is where the under-trained checkpoint is chosen from.
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
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hopfield_gag.models import registry  # noqa: E402
from hopfield_gag.models.grid_data import NULL_TOKEN, GridCanvases  # noqa: E402

WEIGHTS = ROOT / "hopfield_gag" / "models" / "weights"
NAMES = {"dit": "dit-grid", "unet": "unet-grid", "sd3": "sd3-grid", "student": "dit-grid-student",
         "undertrained": "dit-grid-undertrained"}
DEFAULTS = {  # steps, batch, lr
    "dit": (3000, 64, 1e-3),
    "unet": (3000, 64, 1e-3),
    "sd3": (3000, 64, 1e-3),
    "student": (1500, 64, 3e-4),
}


def _commit() -> str:
    if os.environ.get("TRAIN_GRID_COMMIT"):  # a run from an exported snapshot of a commit (no .git there)
        return os.environ["TRAIN_GRID_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except Exception:  # noqa: BLE001 - a record without a commit is still useful
        return "unknown"


def _lr_schedule(args):
    warmup = min(200, max(1, args.steps // 10))

    def lr_at(step):  # linear warm-up, cosine decay to 10% over --steps
        if step < warmup:
            return args.lr * (step + 1) / warmup
        frac = min(1.0, (step - warmup) / max(1, args.steps - warmup))
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))

    return lr_at


def _save_ckpt(ema, directory: Path, step: int) -> None:
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in ema.state_dict().items()}, str(directory / f"step{step:05d}.safetensors"))


def train(args, name: str, model, batch_fn, cpu_offset: float = 0.0) -> None:
    """Generic loop: ``batch_fn(step) -> (x_t, t, tokens, target)``; writes weights, record and curve."""
    commit = _commit()
    ema = copy.deepcopy(model).requires_grad_(False)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    lr_at = _lr_schedule(args)
    log_path = WEIGHTS / f"{name}.train.jsonl"
    log = open(log_path, "w")
    print(f"{name}: {n_params} parameters, up to {args.steps} steps of batch {args.batch}, "
          f"{args.cpu_minutes} CPU-min, {args.threads} threads", flush=True)
    cpu0, wall0 = time.process_time() - cpu_offset, time.perf_counter()
    window, curve, stopped_by, step = [], [], "steps", 0
    ckpt_dir = Path(args.ckpt_dir) / name if args.ckpt_every else None
    for step in range(args.steps):
        xt, t, tokens, target = batch_fn(step)
        loss = (model(xt, t, tokens) - target).pow(2).mean()
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
        if ckpt_dir is not None and (step + 1) % args.ckpt_every == 0:
            _save_ckpt(ema, ckpt_dir, step + 1)
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
    if ckpt_dir is not None:
        _save_ckpt(ema, ckpt_dir, step + 1)
    meta = dict(
        name=name, parameters=n_params, steps_done=step + 1, steps=args.steps, stopped_by=stopped_by, batch=args.batch,
        lr=args.lr, ema=args.ema, p_uncond=args.p_uncond, seed=args.seed, threads=args.threads,
        cpu_seconds=round(cpu, 1), wall_seconds=round(wall, 1), final_loss=curve[-1]["loss"] if curve else None,
        commit=commit, command="python experiments/train_grid.py " + " ".join(sys.argv[1:]),
        loadavg_at_end=os.getloadavg(), fp16=args.fp16, card_model=args.model,
        notes=getattr(args, "notes", []),
    )
    registry.save(name, ema, meta, WEIGHTS, half=args.fp16)
    print(f"saved {name}: cpu {cpu:.0f}s wall {wall:.0f}s loss {meta['final_loss']:.4f}", flush=True)


def flow_batches(args):
    """Seeded flow-matching batches of training canvases (condition dropout to the all-null prompt)."""
    data = GridCanvases(seed=args.seed, split="train")
    gen = torch.Generator().manual_seed(args.seed + 1)

    def batch_fn(step):
        canv, tokens, _ = data.batch(args.batch)
        x1 = 2.0 * canv - 1.0
        drop = torch.rand(args.batch, generator=gen) < args.p_uncond
        tokens = torch.where(drop[:, None], torch.full_like(tokens, NULL_TOKEN), tokens)
        eps = torch.randn(x1.shape, generator=gen)
        t = torch.rand(args.batch, generator=gen)
        xt = (1 - t)[:, None, None, None] * eps + t[:, None, None, None] * x1
        return xt, t, tokens, x1 - eps

    return batch_fn


def train_and_save_canvas_features(args) -> int:
    from safetensors.torch import save_file

    from hopfield_gag.models.grid_judge import train_canvas_features

    cpu0 = time.process_time()
    net, record = train_canvas_features(seed=args.seed)
    record.update(cpu_seconds=round(time.process_time() - cpu0, 1), commit=_commit(), threads=args.threads,
                  command="python experiments/train_grid.py " + " ".join(sys.argv[1:]))
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(WEIGHTS / "grid-canvas-features.safetensors"))
    (WEIGHTS / "grid-canvas-features.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record))
    return 0


def train_student(args) -> None:
    """Reflow then distillation of the grid DiT into a 1-2-step student.

    1. Reflow pairs: ``--pairs`` noises z and the teacher's 16-step Euler samples x1 = T(z, prompt) with CFG
       ``--teacher-cfg`` for training-distribution prompts (10% null prompts, where CFG reduces to the
       teacher's unconditional map), all seeded.
    2. The student starts from the teacher's weights and regresses the straight-line velocity x1 - z at
       x_t = (1 - t) z + t x1 with t drawn 40% at 0 (the 1-step map), 20% at 0.5 (the second of 2 steps) and
       40% uniform (keeps the field usable at other step counts). CFG is distilled into the conditional output:
       sample the student with cfg_scale=1.
    """
    from hopfield_gag.models import load_model, sample
    from hopfield_gag.models.grid_data import layouts_to_tokens, random_layouts

    if args.teacher:  # a saved EMA checkpoint of the dit run instead of the shipped dit-grid (dry runs)
        from safetensors.torch import load_file

        teacher = registry.build("dit-grid").eval().requires_grad_(False)
        teacher.load_state_dict(load_file(args.teacher))
    else:
        teacher = load_model("dit-grid")
    config = json.loads((WEIGHTS / "dit-grid.json").read_text())["config"] if not args.teacher else None
    gen = torch.Generator().manual_seed(args.seed)
    cpu0 = time.process_time()
    zs, x1s, toks = [], [], []
    for i in range(0, args.pairs, args.batch):
        n = min(args.batch, args.pairs - i)
        tokens = layouts_to_tokens(random_layouts(n, gen), gen)
        null = torch.rand(n, generator=gen) < args.p_uncond
        tokens[null] = NULL_TOKEN
        seed = args.seed * 100003 + i
        z = torch.randn((n, 1, 24, 24), generator=torch.Generator().manual_seed(seed))  # = sample()'s noise
        # null rows: v_u + w (v_u - v_u) = v_u, so the CFG sampler gives the teacher's unconditional map there
        x1 = sample(teacher, tokens, steps=16, cfg_scale=args.teacher_cfg, seed=seed) * 2.0 - 1.0
        zs.append(z), x1s.append(x1), toks.append(tokens)
        print(json.dumps(dict(pairs=i + n, cpu_s=round(time.process_time() - cpu0, 1))), flush=True)
    z_all, x1_all, tok_all = torch.cat(zs), torch.cat(x1s), torch.cat(toks)
    pair_cpu = time.process_time() - cpu0
    student = registry.build("dit-grid-student", config)
    student.load_state_dict(teacher.state_dict())
    student.train().requires_grad_(True)

    def batch_fn(step):
        idx = torch.randint(len(z_all), (args.batch,), generator=gen)
        z, x1 = z_all[idx], x1_all[idx]
        u = torch.rand(args.batch, generator=gen)
        t = torch.where(u < 0.4, torch.zeros_like(u), torch.where(u < 0.6, torch.full_like(u, 0.5),
                                                                   torch.rand(args.batch, generator=gen)))
        xt = (1 - t)[:, None, None, None] * z + t[:, None, None, None] * x1
        return xt, t, tok_all[idx], x1 - z

    args.notes = [f"reflow pairs: {args.pairs} teacher samples (16 Euler steps, CFG {args.teacher_cfg:g}; 10% null "
                  f"prompts), {pair_cpu:.0f} CPU-s (included in the CPU time)"]
    train(args, "dit-grid-student", student, batch_fn, cpu_offset=pair_cpu)


def ship_checkpoint(args) -> None:
    """Ship one saved EMA checkpoint: ``--model undertrained`` (a checkpoint of the dit-grid run, shipped as
    ``dit-grid-undertrained``), or ``--model dit|unet|sd3`` whose run was stopped before it wrote its weights
    (then the record says so). The run's training log must be in the weights directory."""
    from safetensors.torch import load_file

    ckpt = Path(args.from_checkpoint)
    step = int(ckpt.stem.replace("step", ""))
    name = NAMES[args.model]
    source = "dit-grid" if args.model == "undertrained" else name
    curve = [json.loads(x) for x in (WEIGHTS / f"{source}.train.jsonl").read_text().splitlines() if x]
    upto = [r for r in curve if r["step"] <= step]
    if args.model == "undertrained":
        full = json.loads((WEIGHTS / "dit-grid.json").read_text())
        tr, config = dict(full["training"]), full["config"]
        tr.update(stopped_by=f"checkpoint at step {step} of the dit-grid run", card_model="undertrained",
                  command=tr["command"] + "; then python experiments/train_grid.py --model undertrained "
                                          f"--from-checkpoint {ckpt.name}")
        (WEIGHTS / "dit-grid-undertrained.train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in upto))
    else:
        config = None
        tr = dict(parameters=None, steps=args.steps, batch=args.batch, lr=args.lr, ema=args.ema,
                  p_uncond=args.p_uncond, seed=args.seed, threads=args.threads, commit=_commit(), fp16=args.fp16,
                  card_model=args.model, loadavg_at_end=os.getloadavg(),
                  stopped_by=f"stopped by hand at the session deadline; EMA checkpoint at step {step}",
                  command=args.run_command or "python experiments/train_grid.py --model " + args.model,
                  notes=[f"shipped with `python experiments/train_grid.py {' '.join(sys.argv[1:])}`"])
    model = registry.build(name, config)
    model.load_state_dict(load_file(str(ckpt)))
    tr.update(name=name, steps_done=step, parameters=sum(p.numel() for p in model.parameters()),
              cpu_seconds=upto[-1]["cpu_s"] if upto else None, wall_seconds=upto[-1]["wall_s"] if upto else None,
              final_loss=upto[-1]["loss"] if upto else None)
    registry.save(name, model, tr, WEIGHTS, half=bool(tr.get("fp16")))


def scan_checkpoints(args) -> int:
    """Exact match at 16 steps without CFG (and with CFG) of every saved dit-grid checkpoint, to choose the
    under-trained one (wanted: no-CFG exact in [0.3, 0.7]); appends to /work/train_logs/dit-grid-scan.jsonl."""
    from safetensors.torch import load_file

    from hopfield_gag.models.grid_card import CARD_CFG, evaluate_grid
    from hopfield_gag.models.grid_data import eval_prompts
    from hopfield_gag.models.grid_judge import load_grid_judge

    judge = load_grid_judge()
    prompts = eval_prompts("in-distribution", args.scan_n)
    out = Path(args.ckpt_dir).parent / "dit-grid-scan.jsonl"
    done = {json.loads(x)["ckpt"] for x in out.read_text().splitlines()} if out.is_file() else set()
    model = registry.build("dit-grid")
    for ckpt in sorted((Path(args.ckpt_dir) / "dit-grid").glob("step*.safetensors")):
        if ckpt.name in done or int(ckpt.stem[4:]) < args.scan_min_step:
            continue
        model.load_state_dict(load_file(str(ckpt)))
        model.eval()
        rec = dict(ckpt=ckpt.name, n=args.scan_n)
        for w in (1.0, CARD_CFG):
            m, _ = evaluate_grid(model, judge, prompts, 16, w)
            rec[f"exact_cfg{w:g}"], rec[f"cell_cfg{w:g}"] = m["exact"], m["cell_accuracy"]
        with open(out, "a") as fh:
            fh.write(json.dumps(rec) + "\n")
        print(json.dumps(rec), flush=True)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["dit", "unet", "sd3", "student", "undertrained", "canvas-features"], required=True)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--ema", type=float, default=0.998)
    p.add_argument("--p-uncond", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cpu-minutes", type=float, default=40.0, help="stop when the process CPU time exceeds this")
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--ckpt-every", type=int, default=0, help="also save the EMA weights every N steps to --ckpt-dir")
    p.add_argument("--ckpt-dir", default="/work/train_logs/ckpt")
    p.add_argument("--fp16", action="store_true", help="store the weights in fp16")
    p.add_argument("--config", default=None, help="JSON architecture overrides")
    p.add_argument("--pairs", type=int, default=2048, help="student: reflow pairs from the teacher")
    p.add_argument("--teacher-cfg", type=float, default=3.0, help="student: CFG scale of the teacher's pairs")
    p.add_argument("--teacher", default=None, help="student: teacher checkpoint (default: the shipped dit-grid)")
    p.add_argument("--from-checkpoint", default=None, help="undertrained: the checkpoint to ship")
    p.add_argument("--scan", action="store_true", help="dit: evaluate the saved checkpoints (16 steps, +-CFG)")
    p.add_argument("--scan-n", type=int, default=100)
    p.add_argument("--scan-min-step", type=int, default=0)
    p.add_argument("--run-command", default=None, help="with --from-checkpoint: the command of the stopped run")
    p.add_argument("--card-only", action="store_true", help="only (re)write the model card from the shipped weights")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    steps, batch, lr = DEFAULTS.get(args.model, (0, 0, 0.0))
    args.steps = args.steps or steps
    args.batch = args.batch or batch
    args.lr = args.lr or lr
    name = NAMES.get(args.model)
    if args.scan:
        return scan_checkpoints(args)
    if args.model == "canvas-features":
        return train_and_save_canvas_features(args)
    if not args.card_only:
        if args.model in ("dit", "unet", "sd3") and not args.from_checkpoint:
            model = registry.build(name, json.loads(args.config) if args.config else None)
            train(args, name, model, flow_batches(args))
        elif args.model == "student":
            train_student(args)
        elif args.model == "undertrained" or args.from_checkpoint:
            if not args.from_checkpoint:
                raise SystemExit("--model undertrained needs --from-checkpoint PATH (a step*.safetensors of the dit run)")
            ship_checkpoint(args)
    if args.card_only:
        write_card(name)
    return 0


def write_card(name: str) -> None:
    from hopfield_gag.models.grid_card import CARD_CFG, headroom, student_lines, write_grid_card
    from hopfield_gag.models.grid_judge import load_grid_judge

    if name == "dit-grid-student":
        from hopfield_gag.models import load_model

        results = headroom(load_model(name), load_grid_judge(), steps=(1, 2, 4), cfgs=(1.0, CARD_CFG),
                           gag_settings=((1, 1.0), (2, 1.0)))
        teacher = json.loads((WEIGHTS / "dit-grid.metrics.json").read_text())
        print(write_grid_card(name, WEIGHTS, results, extra_lines=student_lines(results, teacher), png_steps=1, png_cfg=1.0))
    else:
        print(write_grid_card(name, WEIGHTS))


if __name__ == "__main__":
    sys.exit(main())
