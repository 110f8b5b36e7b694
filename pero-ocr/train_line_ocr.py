#!/usr/bin/env python3
"""Train the bundled line-OCR model (pero-ocr `PytorchEngineLineOCR` format) on synthetic lines.

One command, fixed seeds (data workers are seeded per worker; with several
workers the order in which their batches arrive is not deterministic, so two
runs agree statistically, not bit for bit):

    /usr/bin/python3 pero-ocr/collect_fonts.py --out .fonts      # once: fonts + coverage manifest
    python pero-ocr/train_line_ocr.py --device cuda --minutes 6 --workers 15 --out /tmp/run
    python pero-ocr/train_line_ocr.py --export /tmp/run/checkpoint.pt --model-dir pero-ocr/model
    python pero-ocr/train_line_ocr.py --evaluate pero-ocr/model        # CER through pero-ocr itself

Training: worker processes render batches (render_lines.py) into a queue; the
trainer takes fresh batches when there are any and otherwise replays recent
ones, so a fast GPU never waits for the CPUs. CTC loss, AdamW, warm-up then
cosine decay over the time budget, bf16 autocast on CUDA. Validation CER is
measured on fixed line sets of the training fonts and of the held-out family
(HELD_OUT_FONTS.txt), both rendered with augmentation like training data.

Network contract (pero_ocr/ocr_engine/pytorch_ocr_engine.py): input N x 3 x 40 x W
floats in [0, 1] (the line crops on a black canvas, 32 px padding), output
N x C x W/4 logits, blank = last class.
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import queue as queue_mod
import random
import shutil
import sys
import time
from collections import deque
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pero_worker.training.charset import CHARACTERS

HERE = Path(__file__).resolve().parent

NET_NAME = "pero_worker_conv_blstm_v1"
LINE_PX_HEIGHT = 40
LINE_VERTICAL_SCALE = 1.25   # = render_lines.LINE_SCALE = config.ini LINE_CROPPER LINE_SCALE


# --------------------------------------------------------------------------------------------
# Network
# --------------------------------------------------------------------------------------------


def _conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class LineOCRNet(nn.Module):
    """Conv feature extractor (x4 horizontal subsampling) + BiLSTM + linear CTC head.

    Four conv stages (`reps[i]` 3x3 convs of `channels[i]` each); after stages 1 and 2
    a 2x2 max-pool, after stage 3 a vertical-only one, so 40 x W becomes 5 x W/4.
    """

    def __init__(self, n_classes: int, channels: tuple[int, ...] = (16, 32, 64, 96),
                 proj: int = 160, hidden: int = 128, dropout: float = 0.1,
                 reps: tuple[int, ...] = (1, 1, 2, 1), layers: int = 2):
        super().__init__()
        pools: list[nn.Module | None] = [nn.MaxPool2d(2, 2), nn.MaxPool2d(2, 2), nn.MaxPool2d((2, 1), (2, 1)), None]
        mods: list[nn.Module] = []
        cin = 3
        for c, r, pool in zip(channels, reps, pools):
            for _ in range(r):
                mods.append(_conv(cin, c))
                cin = c
            if pool is not None:
                mods.append(pool)
        self.cnn = nn.Sequential(*mods)
        self.proj = nn.Sequential(nn.Conv1d(cin * 5, proj, 1, bias=False), nn.BatchNorm1d(proj), nn.ReLU(inplace=True))
        self.rnn = nn.LSTM(proj, hidden, num_layers=layers, bidirectional=True, batch_first=True,
                           dropout=dropout if layers > 1 else 0.0)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(2 * hidden, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Conv part (run under bf16 autocast in training): N x 3 x 40 x W -> N x proj x W/4."""
        f = self.cnn(x)
        n, c, h, w = f.shape
        return self.proj(f.reshape(n, c * h, w))

    def head(self, f: torch.Tensor) -> torch.Tensor:
        """Recurrent part, always float32: N x proj x T -> N x C x T logits."""
        f, _ = self.rnn(f.permute(0, 2, 1))
        f = self.out(self.drop(f))
        return f.permute(0, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build_model(cfg: dict) -> LineOCRNet:
    return LineOCRNet(len(CHARACTERS) + 1, tuple(cfg["channels"]), cfg["proj"], cfg["hidden"], cfg["dropout"],
                      tuple(cfg["reps"]), cfg["layers"])


# --------------------------------------------------------------------------------------------
# Decoding and CER
# --------------------------------------------------------------------------------------------


def greedy_decode(logits: torch.Tensor) -> list[str]:
    """Best path, collapse repeats, drop blanks (= pero-ocr's greedy_decode_ctc). logits: N x C x T."""
    blank = logits.shape[1] - 1
    best = logits.argmax(1).cpu().numpy()
    out = []
    for row in best:
        chars = []
        prev = -1
        for k in row:
            if k != prev and k != blank:
                chars.append(CHARACTERS[k])
            prev = k
        out.append("".join(chars))
    return out


def edit_distance(a: str, b: str) -> int:
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def cer(refs: list[str], hyps: list[str]) -> float:
    errors = sum(edit_distance(r, h) for r, h in zip(refs, hyps))
    return errors / max(1, sum(len(r) for r in refs))


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def _quiet_threads() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    import cv2
    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def _encode(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    index = {c: i for i, c in enumerate(CHARACTERS)}
    labels = np.array([index[c] for t in texts for c in t], dtype=np.int64)
    lengths = np.array([len(t) for t in texts], dtype=np.int64)
    return labels, lengths


def data_worker(wid: int, seed: int, font_dir: str, batch_size: int, out_q, stop) -> None:
    """Render batches forever: 4 batches at a time, lines sorted by width to save padding."""
    _quiet_threads()
    import render_lines as R
    sampler = R.LineSampler(R.load_fonts(Path(font_dir)), seed * 1000 + wid)
    while not stop.is_set():
        samples = [sampler.sample() for _ in range(4 * batch_size)]
        samples.sort(key=lambda s: s[0].shape[1])
        for k in range(4):
            chunk = samples[k * batch_size:(k + 1) * batch_size]
            images = R.engine_batch([c for c, _ in chunk])
            labels, lengths = _encode([t for _, t in chunk])
            texts = [t for _, t in chunk]
            while not stop.is_set():
                try:
                    out_q.put((images, labels, lengths, texts), timeout=0.5)
                    break
                except queue_mod.Full:
                    continue


def render_set(args: tuple[str, str, int, int, bool]) -> list[tuple[np.ndarray, str]]:
    """A fixed list of (crop, text) for validation, from one seed."""
    font_dir, manifest, seed, count, augment = args
    _quiet_threads()
    import render_lines as R
    sampler = R.LineSampler(R.load_fonts(Path(font_dir), manifest), seed, augment=augment)
    return [sampler.sample() for _ in range(count)]


VAL_CHUNKS = 8  # fixed, so the validation lines do not depend on the number of workers


def make_val_set(pool, font_dir: str, seed: int, count: int, augment: bool) -> list:
    per = math.ceil(count / VAL_CHUNKS)
    jobs = [(font_dir, "manifest.json", seed + i, per, augment) for i in range(VAL_CHUNKS)]
    parts = pool.map(render_set, jobs) if pool is not None else [render_set(j) for j in jobs]
    return [s for p in parts for s in p][:count]


class LocalData:
    """--workers 0: render in the training process and reuse a pool of recent lines.

    Each step renders a few new lines; a batch is a window of similar widths
    (little padding) from a random sample of the pool.
    """

    def __init__(self, font_dir: str, seed: int, batch_size: int, pool_size: int, fresh_per_step: int):
        import render_lines as R
        self.R = R
        self.sampler = R.LineSampler(R.load_fonts(Path(font_dir)), seed * 1000)
        self.pool: deque = deque(maxlen=pool_size)
        self.rng = random.Random(seed)
        self.batch_size = batch_size
        self.fresh = fresh_per_step

    def next_batch(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
        n_new = max(self.fresh, 4 * self.batch_size - len(self.pool))
        for _ in range(n_new):
            self.pool.append(self.sampler.sample())
        cand = sorted(self.rng.sample(range(len(self.pool)), 4 * self.batch_size),
                      key=lambda i: self.pool[i][0].shape[1])
        start = self.rng.randrange(len(cand) - self.batch_size + 1)
        chosen = [self.pool[i] for i in cand[start:start + self.batch_size]]
        texts = [t for _, t in chosen]
        labels, lengths = _encode(texts)
        return self.R.engine_batch([c for c, _ in chosen]), labels, lengths, texts


def val_batches(samples: list, batch_size: int) -> list:
    import render_lines as R
    samples = sorted(samples, key=lambda s: s[0].shape[1])
    out = []
    for i in range(0, len(samples), batch_size):
        chunk = samples[i:i + batch_size]
        out.append((R.engine_batch([c for c, _ in chunk]), [t for _, t in chunk]))
    return out


def to_input(images: np.ndarray, device: torch.device, colour: bool, gen: torch.Generator | None) -> torch.Tensor:
    """uint8 N x H x W grey -> float N x 3 x H x W in [0, 1]; optional random paper tint per line."""
    x = torch.from_numpy(images).to(device, non_blocking=True).float().div_(255.0)
    x = x.unsqueeze(1).expand(-1, 3, -1, -1).contiguous()
    if colour:
        n = x.shape[0]
        tint = 1.0 - torch.rand(n, 3, 1, 1, device=device, generator=gen) * 0.3
        use = (torch.rand(n, 1, 1, 1, device=device, generator=gen) < 0.3).float()
        x = x * (use * tint + (1.0 - use))
    return x


def run_model(model: LineOCRNet, x: torch.Tensor, amp: bool) -> torch.Tensor:
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        f = model.features(x)
    return model.head(f.float())


@torch.no_grad()
def evaluate(model: nn.Module, batches: list, device: torch.device, amp: bool) -> float:
    model.eval()
    refs, hyps = [], []
    for images, texts in batches:
        x = to_input(images, device, False, None).contiguous(memory_format=torch.channels_last)
        logits = run_model(model, x, amp)
        hyps += greedy_decode(logits)
        refs += texts
    model.train()
    return cer(refs, hyps)


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------


def engine_json() -> dict:
    return {
        "net_name": NET_NAME,
        "checkpoint": "model.pt",
        "line_px_height": LINE_PX_HEIGHT,
        "line_vertical_scale": LINE_VERTICAL_SCALE,
        "characters": list(CHARACTERS),
    }


def export_model(model: nn.Module, model_dir: Path) -> None:
    """TorchScript model.pt (+ identical model.pt.cpu, which pero-ocr loads on CPU) and ocr_engine.json."""
    model_dir.mkdir(parents=True, exist_ok=True)
    model = model.float().cpu().eval()
    scripted = torch.jit.script(model)
    scripted.save(str(model_dir / "model.pt"))
    shutil.copyfile(model_dir / "model.pt", model_dir / "model.pt.cpu")
    (model_dir / "ocr_engine.json").write_text(json.dumps(engine_json(), ensure_ascii=False, indent=1) + "\n",
                                               encoding="utf-8")


def load_exported(model: nn.Module, model_dir: Path) -> None:
    """Start from an exported model's weights (fine-tuning); the network settings must be the ones it was
    trained with (ValueError names the first mismatch)."""
    scripted = torch.jit.load(str(Path(model_dir) / "model.pt"), map_location="cpu")
    weights = scripted.state_dict()
    own = model.state_dict()
    for name, tensor in own.items():
        if name not in weights or weights[name].shape != tensor.shape:
            found = tuple(weights[name].shape) if name in weights else "missing"
            raise ValueError(f"{model_dir} does not fit these network settings: {name} is {found}, "
                             f"expected {tuple(tensor.shape)} (give the --channels/--proj/--hidden it was "
                             "trained with)")
    model.load_state_dict({name: weights[name] for name in own})


def export_checkpoint(ckpt_path: Path, model_dir: Path) -> None:
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    model = build_model(ckpt["config"])
    model.load_state_dict(ckpt["state_dict"])
    export_model(model, model_dir)
    print(f"exported {ckpt_path} -> {model_dir}")


def evaluate_engine(model_dir: Path, font_dir: Path, count: int, seed: int) -> dict:
    """CER of an exported model run through pero-ocr's own PytorchEngineLineOCR on CPU."""
    import render_lines as R
    from pero_ocr.ocr_engine.pytorch_ocr_engine import PytorchEngineLineOCR
    engine = PytorchEngineLineOCR(str(model_dir / "ocr_engine.json"), torch.device("cpu"))
    result = {}
    for name, fonts in (("held_in", R.load_fonts(font_dir)), ("held_out", R.load_fonts(font_dir / "held_out"))):
        for augment in (False, True):
            sampler = R.LineSampler(fonts, seed, augment=augment)
            samples = [sampler.sample() for _ in range(count)]
            crops = [np.repeat(c[:, :, None], 3, axis=2) for c, _ in samples]
            hyps, _, _ = engine.process_lines(crops, no_logits=True)
            key = f"{name}_{'augmented' if augment else 'clean'}"
            result[key] = round(cer([t for _, t in samples], hyps), 5)
            print(f"{key}: CER {result[key]:.4f} on {count} lines", flush=True)
    return result


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def check_shaping(allow_plain: bool) -> None:
    """Refuse to train without text shaping (Pillow's libraqm), unless told: without it no ligature or small
    capital is ever drawn, and a model trained so reads print's "fi" as one letter (issue 10: "frst", "offce")."""
    import render_lines as R
    if not R.SHAPING and not allow_plain:
        raise SystemExit("Pillow has no libraqm here (PIL.features.check('raqm') is False): ligatures and small caps "
                         "would not be rendered. Install libraqm0 (Debian) or pass --no-shaping to train anyway.")


def train(args: argparse.Namespace) -> int:
    check_shaping(args.no_shaping)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    amp = device.type == "cuda" and not args.no_amp
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log_f = open(out / "train.log", "a", encoding="utf-8")

    def log(msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        log_f.write(line + "\n")
        log_f.flush()

    t_start = time.time()
    cfg = {"channels": [int(c) for c in args.channels.split(",")], "reps": [int(c) for c in args.reps.split(",")],
           "proj": args.proj, "hidden": args.hidden, "layers": args.layers, "dropout": 0.1}

    ctx = mp.get_context("fork")
    font_dir = str(args.font_dir)
    held_dir = str(Path(font_dir) / "held_out")
    if args.workers > 0:
        with ctx.Pool(args.workers) as pool:
            val_in = make_val_set(pool, font_dir, 10_000_000 + args.seed, args.val_lines, True)
            val_out = make_val_set(pool, held_dir, 20_000_000 + args.seed, args.val_lines, True)
    else:
        val_in = make_val_set(None, font_dir, 10_000_000 + args.seed, args.val_lines, True)
        val_out = make_val_set(None, held_dir, 20_000_000 + args.seed, args.val_lines, True)
    val_in_b = val_batches(val_in, 64)
    val_out_b = val_batches(val_out, 64)
    log(f"validation sets: {len(val_in)} held-in, {len(val_out)} held-out lines "
        f"({time.time() - t_start:.1f} s)")

    stop = ctx.Event()
    data_q = ctx.Queue(maxsize=256)
    workers = [ctx.Process(target=data_worker, args=(w, args.seed, font_dir, args.batch_size, data_q, stop),
                           daemon=True) for w in range(args.workers)]
    for w in workers:
        w.start()
    local = LocalData(font_dir, args.seed, args.batch_size, args.pool_size, args.fresh_per_step) \
        if args.workers == 0 else None

    # The model (and CUDA) only after all forks: the data processes never touch the GPU.
    model = build_model(cfg)
    if args.init:
        load_exported(model, args.init)
        log(f"fine-tuning from {args.init}")
    model = model.to(device)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"device {device} ({torch.cuda.get_device_name(0) if device.type == 'cuda' else 'cpu'}), "
        f"{n_params / 1e6:.2f} M parameters, amp={amp}, torch {torch.__version__}")
    model = model.to(memory_format=torch.channels_last)

    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    gen = torch.Generator(device=device)
    gen.manual_seed(args.seed)
    replay: deque = deque(maxlen=args.replay)
    fresh: deque = deque()
    pick = random.Random(args.seed)
    budget = args.minutes * 60.0
    t0 = time.time()
    step = 0
    n_fresh = 0
    lines_seen = 0
    loss_avg = None
    last_val = t0
    last_ckpt = t0
    history = []

    def save_checkpoint(path: Path) -> None:
        torch.save({"config": cfg, "state_dict": {k: v.detach().float().cpu() for k, v in model.state_dict().items()},
                    "step": step, "characters": CHARACTERS}, path)

    def validate() -> dict:
        r = {"step": step, "minutes": round((time.time() - t0) / 60, 2), "lines_seen": lines_seen,
             "fresh_share": round(n_fresh / max(1, step), 3), "loss": round(loss_avg or 0.0, 4),
             "cer_held_in": round(evaluate(model, val_in_b, device, amp), 5),
             "cer_held_out": round(evaluate(model, val_out_b, device, amp), 5)}
        history.append(r)
        log(f"val {json.dumps(r)}")
        return r

    try:
        while True:
            elapsed = time.time() - t0
            if elapsed >= budget or (args.max_steps and step >= args.max_steps):
                break
            while local is None:
                try:
                    b = data_q.get_nowait()
                except queue_mod.Empty:
                    break
                fresh.append(b)
                replay.append(b)
            if local is not None:
                images, labels, lengths, _ = local.next_batch()
                n_fresh += min(1.0, args.fresh_per_step / args.batch_size)
            elif fresh:
                images, labels, lengths, _ = fresh.popleft()
                n_fresh += 1
            elif replay and step > 0:
                images, labels, lengths, _ = replay[pick.randrange(len(replay))]
            else:
                b = data_q.get()
                replay.append(b)
                images, labels, lengths, _ = b
                n_fresh += 1

            frac = min(1.0, elapsed / budget)
            lr = args.lr * min(1.0, (step + 1) / args.warmup) * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * frac)))
            for g in opt.param_groups:
                g["lr"] = lr
            x = to_input(images, device, True, gen).contiguous(memory_format=torch.channels_last)
            targets = torch.from_numpy(labels).to(device)
            target_lengths = torch.from_numpy(lengths).to(device)
            logits = run_model(model, x, amp)
            logp = logits.log_softmax(1).permute(2, 0, 1)  # T x N x C
            input_lengths = torch.full((logp.shape[1],), logp.shape[0], dtype=torch.long, device=device)
            loss = F.ctc_loss(logp, targets, input_lengths, target_lengths, blank=logp.shape[2] - 1,
                              zero_infinity=True)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            step += 1
            lines_seen += images.shape[0]
            lv = float(loss.detach()) if step % 50 == 0 or step < 5 else None
            if lv is not None:
                loss_avg = lv if loss_avg is None else 0.8 * loss_avg + 0.2 * lv
            if step % args.log_every == 0:
                log(f"step {step} loss {loss_avg:.4f} lr {lr:.2e} fresh {n_fresh / step:.2f} "
                    f"lines/s {lines_seen / (time.time() - t0):.0f} queue {len(fresh)}")
            now = time.time()
            if now - last_val >= args.val_every:
                validate()
                last_val = now
            if now - last_ckpt >= args.ckpt_every:
                save_checkpoint(out / "checkpoint.pt")
                last_ckpt = now
    finally:
        stop.set()
        for w in workers:
            w.join(timeout=2)
            if w.is_alive():
                w.terminate()

    final = validate()
    save_checkpoint(out / "checkpoint.pt")
    export_model(model, out / "model")
    metrics = {"final": final, "history": history, "parameters": n_params, "config": cfg,
               "train_minutes": round((time.time() - t0) / 60, 2),
               "total_minutes": round((time.time() - t_start) / 60, 2),
               "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
               "torch": torch.__version__, "seed": args.seed, "batch_size": args.batch_size,
               "workers": args.workers, "lr": args.lr}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1), encoding="utf-8")
    log(f"done: {json.dumps(final)}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="cuda, cpu or auto (default)")
    ap.add_argument("--minutes", type=float, default=6.0, help="training time budget (the LR schedule spans it)")
    ap.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (0 = time budget only)")
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1),
                    help="data processes; 0 = render in the training process itself (one CPU thread in all)")
    ap.add_argument("--pool-size", type=int, default=4000, help="--workers 0: rendered lines kept for reuse")
    ap.add_argument("--fresh-per-step", type=int, default=5, help="--workers 0: lines rendered per step")
    ap.add_argument("--threads", type=int, default=1, help="torch threads when training on the CPU")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1.5e-3)
    ap.add_argument("--warmup", type=int, default=300, help="warm-up steps")
    ap.add_argument("--replay", type=int, default=1500, help="batches kept for replay when the GPU outruns the CPUs")
    ap.add_argument("--channels", default="16,32,64,96", help="conv widths of the 4 stages")
    ap.add_argument("--reps", default="1,1,2,1", help="3x3 convs in each of the 4 stages")
    ap.add_argument("--proj", type=int, default=160)
    ap.add_argument("--hidden", type=int, default=128, help="LSTM units per direction")
    ap.add_argument("--layers", type=int, default=2, help="BiLSTM layers")
    ap.add_argument("--no-amp", action="store_true", help="no bf16 autocast on CUDA")
    ap.add_argument("--no-shaping", action="store_true",
                    help="train even where Pillow lacks libraqm (no ligatures, no true small caps)")
    ap.add_argument("--val-lines", type=int, default=512, help="lines in each validation set")
    ap.add_argument("--val-every", type=float, default=60.0, help="seconds between validations")
    ap.add_argument("--ckpt-every", type=float, default=90.0, help="seconds between checkpoints")
    ap.add_argument("--log-every", type=int, default=200, help="steps between log lines")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--font-dir", type=Path, default=Path(".fonts"), help="made by collect_fonts.py")
    ap.add_argument("--out", type=Path, default=Path("/tmp/line_ocr_run"),
                    help="train.log, checkpoint.pt, metrics.json, model/")
    ap.add_argument("--init", type=Path, metavar="MODEL_DIR",
                    help="fine-tune: start from an exported model's weights (e.g. pero-ocr/model) instead of random")
    ap.add_argument("--export", type=Path, metavar="CHECKPOINT", help="only export a checkpoint to --model-dir")
    ap.add_argument("--model-dir", type=Path, default=HERE / "model")
    ap.add_argument("--evaluate", type=Path, metavar="MODEL_DIR",
                    help="only measure an exported model's CER through pero-ocr on CPU")
    ap.add_argument("--eval-lines", type=int, default=300)
    args = ap.parse_args()
    if args.export:
        export_checkpoint(args.export, args.model_dir)
        return 0
    if args.evaluate:
        torch.set_num_threads(args.threads)
        print(json.dumps(evaluate_engine(args.evaluate, args.font_dir, args.eval_lines, 30_000_000 + args.seed)))
        return 0
    return train(args)


if __name__ == "__main__":
    sys.exit(main())
