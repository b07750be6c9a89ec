"""What every toy training script shares: arguments, resumable checkpoints, EMA, logs and the text cache."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, cast

import torch
from diffusers.schedulers.scheduling_ddpm import DDPMScheduler
from safetensors.torch import load_file
from tqdm import tqdm

from training.architectures import encode

RUNS_DIR = Path(__file__).resolve().parent / "runs"
logger = logging.getLogger("training")


def arguments(name: str, *, steps: int, batch: int, lr: float) -> argparse.ArgumentParser:
    """The options every trainer takes; `name` names its run folder under training/runs."""
    parser = argparse.ArgumentParser(description=f"train the toy preset's {name} model (resumable)")
    parser.add_argument("--steps", type=int, default=steps, help="train until this many steps in all")
    parser.add_argument("--batch", type=int, default=batch)
    parser.add_argument("--lr", type=float, default=lr)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 1)))
    parser.add_argument("--run-dir", type=Path, default=RUNS_DIR / name)
    parser.add_argument("--checkpoint-every", type=int, default=200)
    parser.add_argument("--export-every", type=int, default=1000)
    parser.add_argument("--no-export", action="store_true", help="never overwrite the committed weights")
    parser.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        default=native_bf16(),
        help="bf16 autocast (default: where the CPU computes bf16 natively)",
    )
    return parser


def native_bf16() -> bool:
    """Whether this CPU has AVX-512 (bf16 autocast pays off there; on an AVX2-only CPU a step took ~9x
    longer in bf16 than in fp32)."""
    return torch.backends.cpu.get_cpu_capability().startswith(("AVX512", "AMX"))


def setup_logging(run_dir: Path) -> None:
    """Log to stderr and to `run_dir`/train.log (appended to on resume)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr), logging.FileHandler(run_dir / "train.log")]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", handlers=handlers, force=True)


class Ema:
    """An exponential moving average of a model's parameters (the weights that get exported)."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {name: value.detach().clone().float() for name, value in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        # Short memory early on, so the average is not dominated by the random initialization.
        decay = min(self.decay, (1 + step) / (10 + step))
        for name, value in model.state_dict().items():
            shadow = self.shadow[name]
            if value.dtype.is_floating_point:
                shadow.mul_(decay).add_(value.detach().float(), alpha=1 - decay)
            else:
                shadow.copy_(value)

    def copy_to(self, model: torch.nn.Module) -> None:
        model.load_state_dict(self.shadow)


def save_checkpoint(run_dir: Path, step: int, **parts: Any) -> None:
    """Write `run_dir`/checkpoint.pt atomically: a crash mid-write leaves the previous one intact."""
    path = run_dir / "checkpoint.pt"
    partial = path.with_suffix(".tmp")
    torch.save({"step": step, **parts}, partial)
    os.replace(partial, path)


def load_checkpoint(run_dir: Path) -> dict[str, Any] | None:
    """The last checkpoint in `run_dir`, or None."""
    path = run_dir / "checkpoint.pt"
    if not path.is_file():
        return None
    checkpoint: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
    return checkpoint


def start_training(
    model: torch.nn.Module,
    run_dir: Path,
    committed: Path,
    load_committed: Callable[[], dict[str, torch.Tensor] | None],
    *,
    lr: float,
    ema_decay: float,
) -> tuple[Ema, torch.optim.Optimizer, int]:
    """The EMA, optimizer and first step of a run: from its checkpoint, else from the exported folder
    `committed` (its weights as `load_committed` reads them, None if there are none; a fresh checkout goes
    on where the last export stopped, with a new optimizer), else from scratch."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    checkpoint = load_checkpoint(run_dir)
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        ema = Ema(model, ema_decay)
        ema.shadow = checkpoint["ema"]
        optimizer.load_state_dict(checkpoint["optimizer"])
        logger.info("resumed %s at step %d", run_dir, checkpoint["step"])
        return ema, optimizer, int(checkpoint["step"])
    weights = load_committed()
    if weights is not None:
        model.load_state_dict({name: value.float() for name, value in weights.items()})
        start = previous_steps(committed)
        logger.info("continuing from the committed weights in %s, trained %d steps", committed, start)
        return Ema(model, ema_decay), optimizer, start
    return Ema(model, ema_decay), optimizer, 0


def unet_weights(folder: Path) -> dict[str, torch.Tensor] | None:
    """The UNet weights of an exported pipeline folder, or None if it has none."""
    path = folder / "unet" / "diffusion_pytorch_model.safetensors"
    return load_file(path) if path.is_file() else None


def end_of_step(
    done: int,
    args: argparse.Namespace,
    model: torch.nn.Module,
    ema: Ema,
    optimizer: torch.optim.Optimizer,
    export: Callable[[int], None],
) -> None:
    """After step `done`: the checkpoint, and `export(done)`, when they are due (both after the last step)."""
    last = done == args.steps
    if done % args.checkpoint_every == 0 or last:
        save_checkpoint(args.run_dir, done, model=model.state_dict(), ema=ema.shadow, optimizer=optimizer.state_dict())
    if not args.no_export and (done % args.export_every == 0 or last):
        export(done)
        model.train()


def set_lr(optimizer: torch.optim.Optimizer, lr: float, step: int, warmup: int) -> None:
    """Linear warmup over `warmup` steps, then constant (runs are resumed with no fixed end)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * min(1.0, (step + 1) / warmup)


def diffusion_loss(
    unet: torch.nn.Module,
    scheduler: DDPMScheduler,
    images: torch.Tensor,
    states: torch.Tensor,
    generator: torch.Generator,
    *,
    condition: torch.Tensor | None = None,
    class_labels: torch.Tensor | None = None,
    bf16: bool = True,
) -> torch.Tensor:
    """The v-prediction loss of `unet` on `images` (an SR model also sees `condition`)."""
    noise = torch.randn(images.shape, generator=generator)
    count = scheduler.config["num_train_timesteps"]
    timesteps = cast(torch.IntTensor, torch.randint(0, count, (len(images),), generator=generator))
    noisy = scheduler.add_noise(images, noise, timesteps)
    target = scheduler.get_velocity(images, noise, timesteps)
    model_input = noisy if condition is None else torch.cat([noisy, condition], dim=1)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        output = unet(model_input, timesteps, encoder_hidden_states=states, class_labels=class_labels).sample
    # IF's output layout: the prediction, then a variance that these models leave untrained.
    prediction = output[:, : images.shape[1]].float()
    # Plain v-prediction MSE: in terms of the clean image, every noise level weighs at least 1. Min-SNR
    # weighting was tried first and all but ignores the noisiest steps (weight snr -> 0), which are where
    # the layout is decided: colour was learned, position hardly at all.
    return (prediction - target).pow(2).mean()


def optimize(model: torch.nn.Module, optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    """One optimizer step on `loss`, gradients clipped to norm 1."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()


class StepLog:
    """Mean loss and seconds per step every `every` steps."""

    def __init__(self, every: int = 50) -> None:
        self.every = every
        self.losses: list[float] = []
        self.tick = time.perf_counter()

    def __call__(self, step: int, loss: float, extra: str = "") -> None:
        self.losses.append(loss)
        if step % self.every == 0:
            elapsed = (time.perf_counter() - self.tick) / len(self.losses)
            logger.info("step %d loss %.4f (%.2f s/step)%s", step, sum(self.losses) / len(self.losses), elapsed, extra)
            self.losses.clear()
            self.tick = time.perf_counter()


def record(folder: Path, **info: Any) -> None:
    """Note in the exported folder how its weights were trained (training.json)."""
    path = folder / "training.json"
    path.write_text(json.dumps({**info, "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=2))


def previous_steps(folder: Path) -> int:
    """How many steps the committed weights in `folder` were trained for (0 if none)."""
    path = folder / "training.json"
    return int(json.loads(path.read_text()).get("steps", 0)) if path.is_file() else 0


def progress(start: int, total: int) -> Iterator[int]:
    """Step numbers from `start` to `total`, with a progress bar."""
    bar: Iterable[int] = tqdm(range(start, total), initial=start, total=total, dynamic_ncols=True, mininterval=5)
    yield from bar


class TextCache:
    """Frozen-encoder states of every caption seen so far: the encoder runs once per distinct caption."""

    def __init__(self) -> None:
        self._states: dict[str, torch.Tensor] = {}

    def __call__(self, texts: list[str]) -> torch.Tensor:
        missing = list(dict.fromkeys(text for text in texts if text not in self._states))
        for start in range(0, len(missing), 64):
            chunk = missing[start : start + 64]
            for text, states in zip(chunk, encode(chunk), strict=True):
                self._states[text] = states.to(torch.bfloat16)
        return torch.stack([self._states[text] for text in texts]).float()

    def __len__(self) -> int:
        return len(self._states)
