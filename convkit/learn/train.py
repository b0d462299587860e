"""The training loop: a folder of images -> a model file, resumable, on CPU, CUDA or several
processes under torchrun.

Files written beside the model ``OUT`` (``model.pt`` -> stem ``model``):

* ``OUT``: the best model so far (by validation PSNR; the last one without validation). Its
  metrics describe those weights (``step``, ``epoch``, ``train_seconds`` when they were taken,
  validation PSNR and SSIM) and, refreshed after every epoch and when the run stops, the whole
  run so far (``run_steps`` of ``steps_total``, ``run_epochs``, ``run_seconds``, ``device``).
* ``model.last.ckpt``: the latest training state (a model file plus optimizer, schedule, RNG
  state and counters), written at the start, after every epoch, every ``save_every`` steps and
  when the run is stopped. ``resume`` continues from it exactly.
* ``model.log.jsonl``: one JSON line per epoch: train loss, validation PSNR and SSIM, lr, time.
* ``model.curves.png`` (loss and PSNR), ``model.kernels.png`` (first-layer kernels) and, with
  ``strip``, ``model.strip.png`` (input | output | target of a validation image).

Every file is written atomically (temporary file, then rename), so killing the run at any point
leaves the previous version of each file intact.

Reproducibility: all randomness of a run (crops, flips, noise) comes from one
``torch.Generator`` seeded from ``seed`` (and the rank), whose state is saved in the checkpoint;
the model's initial weights come from ``torch.manual_seed(seed)``. The learning rate is a pure
function of the step (cosine from ``lr`` to ``lr * lr_end`` over the run). So on the CPU a
resumed run gives the same weights as an uninterrupted one.

Under torchrun (``WORLD_SIZE`` > 1) each process trains on its own crops with
DistributedDataParallel (gloo on CPU, NCCL on CUDA); ``batch_size`` is the global batch, split
evenly; only rank 0 validates and writes files.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .data import TrainData, build_data
from .files import FORMAT_VERSION, load_model, read_model_file, save_model, update_metrics
from .metrics import clip_aware_error, psnr, quantize, ssim
from .model import LearnedFilter, ModelConfig

__all__ = [
    "json_safe",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainingError",
    "TrainingInterrupted",
    "train",
    "sidecar",
    "evaluate",
]

MAX_EPOCH_STEPS = 500
# options that may change when a run is resumed: they do not touch the data or the model
RESUME_OVERRIDES = ("data", "epochs", "steps", "lr", "device", "amp", "save_every", "strip")


class TrainingError(ValueError):
    """Training cannot go on (for example the loss became NaN); the message says why and where
    the last good checkpoint is."""


_TIME_LIMIT = 1000  # a stop code no signal has: the wall-time budget ran out


class TrainingInterrupted(Exception):  # noqa: N818 - an outcome, not a failure
    """The run was stopped (Ctrl-C, SIGTERM or a request); the checkpoint was saved."""

    def __init__(self, message: str, signum: int | None, checkpoint: Path, step: int) -> None:
        super().__init__(message)
        self.signum = signum
        self.checkpoint = checkpoint
        self.step = step


@dataclass
class TrainConfig:
    """Everything a run depends on; stored in the checkpoint so that ``resume`` needs only the
    output path.

    Data: ``data`` folder; ``mode`` pairs, mimic (``chain``) or denoise (``sigma`` in grey
    levels of 255); ``val`` split (fraction < 1 or count); ``val_size`` side of the validation
    centre crops; ``grey`` converts images to one channel; ``recursive`` searches sub-folders.
    Model: the :class:`~convkit.learn.model.ModelConfig` fields.
    Optimisation: ``patch`` crop side, ``batch_size`` crops per step (global), ``epochs`` or
    ``steps`` (total optimizer steps; wins over epochs), ``epoch_steps`` (default: one pass over
    the training pixels, at most 500), ``lr`` and ``lr_end`` (the final lr as a fraction of
    ``lr``), ``loss`` l1 or l2, ``seed``, ``device``, ``amp`` (float16 autocast, CUDA only).
    Output: ``output`` model path, ``save_every`` steps between extra checkpoints (0 = at epoch
    ends only), ``strip`` writes the before/after picture.
    """

    data: str
    output: str
    mode: str = "pairs"
    chain: str | None = None
    sigma: float | None = None
    # model
    # (the model's defaults are ModelConfig's, written once there)
    arch: str = ModelConfig.arch
    depth: int = ModelConfig.depth
    width: int = ModelConfig.width
    kernel: int = ModelConfig.kernel
    pool: int = ModelConfig.pool
    activation: str = ModelConfig.activation
    channels: int = ModelConfig.channels
    border: str = ModelConfig.border
    # data
    patch: int = 64
    batch_size: int = 16
    val: float = 0.1
    val_size: int = 256
    grey: bool = False
    flip: bool = True
    recursive: bool = False
    # optimisation
    epochs: int = 10
    steps: int | None = None
    epoch_steps: int | None = None
    lr: float = 2e-3
    lr_end: float = 0.01
    loss: str = "l2"
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    # output
    save_every: int = 0
    strip: bool = True

    def __post_init__(self) -> None:
        self.model_config()  # validates the architecture fields
        checks = (
            ("patch", 1), ("batch_size", 1), ("epochs", 1), ("val_size", 8),
        )
        for name, low in checks:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"{name} should be an integer >= {low}. Got {v!r}")
        for name in ("steps", "epoch_steps"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} should be an integer >= 1. Got {v!r}")
        if self.save_every < 0:
            raise ValueError(f"save_every should be >= 0. Got {self.save_every}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr should be a number > 0. Got {self.lr}")
        if not (0 < self.lr_end <= 1):
            raise ValueError(f"lr_end should be in (0, 1]. Got {self.lr_end}")
        if not (math.isfinite(self.val) and self.val >= 0):
            raise ValueError(f"val should be a fraction in [0, 1) or a count >= 1. Got {self.val}")
        if self.loss not in ("l1", "l2"):
            raise ValueError(f"Invalid loss {self.loss!r}. Expected l1 or l2")
        if self.mode == "mimic" and not self.chain:
            raise ValueError("mimic mode needs a chain spec")
        if self.mode == "denoise" and (self.sigma is None or not self.sigma > 0):
            raise ValueError(f"denoise mode needs sigma > 0 (grey levels). Got {self.sigma}")

    def model_config(self) -> ModelConfig:
        names = {f.name for f in fields(ModelConfig)}
        return ModelConfig(**{k: v for k, v in asdict(self).items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class TrainResult:
    """What a finished run produced."""

    output: Path
    checkpoint: Path
    log: Path
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)
    pictures: list[Path] = field(default_factory=list)


# the files a run writes beside its model
SIDECARS = ("last.ckpt", "log.jsonl", "curves.png", "kernels.png", "strip.png")


def sidecar(output: str | Path, kind: str) -> Path:
    """A file beside the model: ``sidecar("run/model.pt", "log.jsonl")`` ->
    ``run/model.log.jsonl``."""
    output = Path(output)
    return output.with_name(f"{output.stem}.{kind}")


@torch.no_grad()
def evaluate(
    model: nn.Module, val_set: list[tuple[str, Tensor, Tensor, int]], device: torch.device
) -> dict[str, float]:
    """Mean PSNR and SSIM over the validation images of the model's output rounded to the
    target's integer levels (what a saved image holds), and of the input (the baseline)."""
    ps, ss, bp, bs = [], [], [], []
    for _, x, y, levels in val_set:
        out = quantize(model(x.to(device)).float().cpu(), levels)
        ps.append(psnr(out, y))
        ss.append(ssim(out, y))
        bp.append(psnr(x, y))
        bs.append(ssim(x, y))

    def mean(v: list[float]) -> float:
        return sum(v) / len(v) if v else float("nan")

    return {"psnr": mean(ps), "ssim": mean(ss), "base_psnr": mean(bp), "base_ssim": mean(bs)}


class _Net(nn.Module):
    """Training view of the model: its ``net`` on crops that carry their context, so that
    DistributedDataParallel wraps the call that training makes."""

    def __init__(self, model: LearnedFilter) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model.net(x)


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owned: bool = False  # whether we started the process group (and so end it)

    @property
    def main(self) -> bool:
        return self.rank == 0


def _dist_setup(device: str) -> tuple[_Dist, torch.device]:
    from ..api import resolve_device

    world = int(os.environ.get("WORLD_SIZE", "1"))
    dev = resolve_device(device)
    if world <= 1:
        return _Dist(), dev
    import torch.distributed as dist

    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    owned = False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        owned = True
    return _Dist(rank, world, local, owned), dev


class Trainer:
    """One training run. Use :func:`train` unless you need :meth:`request_stop` or callbacks.

    Args:
        config: the run's settings.
        resume: continue from ``<output stem>.last.ckpt``; the stored settings are used, except
            those named in ``RESUME_OVERRIDES`` that ``overrides`` gives.
        overrides: settings that replace the stored ones when resuming.
        force: start over even though a checkpoint of an earlier run exists.
        log: where one-line messages go (default: stderr), on rank 0 only.
        progress: show a tqdm progress bar.
    """

    def __init__(
        self,
        config: TrainConfig,
        *,
        resume: bool = False,
        overrides: dict[str, Any] | None = None,
        force: bool = False,
        log: Callable[[str], None] | None = None,
        progress: bool = True,
        time_limit: float | None = None,
    ) -> None:
        self.output = Path(config.output)
        # a budget of wall time for this run (as Lightning's max_time): at the budget training
        # ends as at its last step (the best model and every output written), not as a stop
        self.time_limit = time_limit
        self.ckpt_path = sidecar(self.output, "last.ckpt")
        self.log_path = sidecar(self.output, "log.jsonl")
        self._log = log or (lambda s: print(s, file=sys.stderr))
        self.progress = progress
        self._stop: int | None = None  # signal number, or 0 for a request
        self.resume_state: dict[str, Any] | None = None
        self.notes: list[str] = []
        self.dist = _Dist()
        if resume:
            payload = self._read_checkpoint()
            stored = TrainConfig.from_dict(payload["train_state"]["train_config"])
            changed = {k: v for k, v in (overrides or {}).items() if k in RESUME_OVERRIDES}
            config = TrainConfig.from_dict({**stored.to_dict(), **changed, "output": str(
                self.output)})
            self.resume_state = payload
        elif self.ckpt_path.exists() and not force:
            raise ValueError(
                f"{self.ckpt_path}: a checkpoint of an earlier run is there; resume it with "
                "--resume, or start over with --force"
            )
        self.cfg = config

    # --- control ------------------------------------------------------------------------
    def request_stop(self, signum: int | None = 0) -> None:
        """Stop after the current step, saving a checkpoint (thread- and signal-safe)."""
        self._stop = 0 if signum is None else signum

    def log(self, msg: str) -> None:
        if self.dist.main:
            if getattr(self, "_bar", None) is not None:
                self._bar.write(msg, file=sys.stderr)
            else:
                self._log(msg)

    def _read_checkpoint(self) -> dict[str, Any]:
        if not self.ckpt_path.exists():
            raise ValueError(
                f"{self.ckpt_path}: no checkpoint to resume from (is -o the same as in the run "
                "to resume?)"
            )
        payload = read_model_file(self.ckpt_path)
        state = payload.get("train_state")
        if not isinstance(state, dict) or "train_config" not in state:
            raise ValueError(f"{self.ckpt_path}: a model file, not a training checkpoint")
        return payload

    # --- the run ------------------------------------------------------------------------
    def run(self, callbacks: Iterable[Callable[[Trainer], None]] = ()) -> TrainResult:
        """Train to the end; returns the result. Raises TrainingInterrupted when stopped (the
        checkpoint is saved) and TrainingError when training fails (the last good checkpoint
        is kept)."""
        callbacks = list(callbacks)
        self.dist, self.device = _dist_setup(self.cfg.device)
        finished = False
        try:
            with _stop_on_signals(self):
                result = self._run(callbacks)
            finished = True
            return result
        finally:
            if self.dist.owned:
                import torch.distributed as dist

                if finished:
                    # Every rank waits for the others before the group goes: a rank that tore
                    # down gloo while rank 0 still wrote the model aborted now and then
                    # ("terminate called without an active exception", exit -6) on a loaded
                    # machine. (After an error the ranks may be out of step: no barrier.)
                    with contextlib.suppress(Exception):
                        dist.barrier()
                dist.destroy_process_group()

    def _setup(self) -> None:
        cfg, dev = self.cfg, self.device
        self.data: TrainData = build_data(
            cfg.data, cfg.mode, chain=cfg.chain if cfg.mode == "mimic" else None,
            sigma=cfg.sigma if cfg.mode == "denoise" else None, val=cfg.val, seed=cfg.seed,
            grey=cfg.grey, channels=cfg.channels, recursive=cfg.recursive,
            # -o inside the data folder: this run's own pictures are not training images
            exclude=[sidecar(self.output, k) for k in SIDECARS],
        )
        for note in self.data.notes:
            self.log(note)
        self.notes = list(self.data.notes)
        torch.manual_seed(cfg.seed)
        self.model = LearnedFilter(cfg.model_config()).to(dev)
        self.context = self.model.reach[0]
        self.patch = self.data.effective_patch(cfg.patch)
        if self.patch < cfg.patch:
            self.log(f"patch {cfg.patch} is larger than the smallest image: using {self.patch}")
        # oneDNN convs run faster in NHWC on the CPU; DDP's gradient buckets want the default
        # layout, so several processes keep it
        self.channels_last = dev.type == "cpu" and self.dist.world == 1
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        net: nn.Module = _Net(self.model)
        if self.dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [dev.index] if dev.type == "cuda" else None
            net = DDP(net, device_ids=ids)
        self.net = net
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        self.lstsq: dict[str, Tensor] | None = None
        if cfg.arch == "linear" and cfg.loss == "l2":
            f = cfg.channels * cfg.kernel * cfg.kernel + 1
            self.lstsq = {"a": torch.zeros(f, f, dtype=torch.float64),
                          "b": torch.zeros(f, cfg.channels, dtype=torch.float64)}
        self.amp = bool(cfg.amp) and dev.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.local_batch = max(1, cfg.batch_size // self.dist.world)
        if cfg.batch_size % self.dist.world:
            self.log(f"batch size {cfg.batch_size} split over {self.dist.world} processes: "
                     f"{self.local_batch} each")
        self.gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + self.dist.rank)
        px = self.data.pixels()
        default_epoch = math.ceil(px / (self.patch * self.patch * cfg.batch_size))
        self.epoch_steps = cfg.epoch_steps or max(1, min(MAX_EPOCH_STEPS, default_epoch))
        self.total = cfg.steps or cfg.epochs * self.epoch_steps
        self.val_set = self.data.val_set(cfg.val_size, cfg.seed) if self.dist.main else []
        # counters
        self.step = 0
        self.epoch = 0
        self.epoch_step = 0
        self.loss_sum = 0.0
        self.loss_count = 0
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        self.elapsed = 0.0
        self.baseline: dict[str, float] = {}
        if self.resume_state is not None:
            self._restore(self.resume_state)

    def _restore(self, payload: dict[str, Any]) -> None:
        st = payload["train_state"]
        self.model.load_state_dict(payload["state_dict"])
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.opt.load_state_dict(st["optimizer"])
        if self.lstsq is not None:
            self.lstsq = {k: v.clone() for k, v in st["lstsq"].items()}
        if self.amp and st.get("scaler"):
            self.scaler.load_state_dict(st["scaler"])
        gens = st["gen_states"]
        if len(gens) == self.dist.world:
            self.gen.set_state(gens[self.dist.rank])
        else:
            self.log(f"the checkpoint was made by {len(gens)} processes, this run has "
                     f"{self.dist.world}: the crops drawn from here on differ")
            self.gen.manual_seed(self.cfg.seed * 1_000_003 + self.dist.rank + 7 * st["step"])
        torch.set_rng_state(st["torch_rng"])
        for k in ("step", "epoch", "epoch_step", "loss_sum", "loss_count", "elapsed"):
            setattr(self, k, st[k])
        self.history = list(st["history"])
        self.best = st["best"]
        self.baseline = dict(st.get("baseline") or {})
        prov = payload["provenance"]
        if prov.get("train_names") is not None and prov["train_names"] != self._train_names():
            self.log(f"{self.cfg.data}: the images differ from the checkpoint's; the run "
                     "continues on the images found now")
        self.log(f"resuming {self.ckpt_path} at step {self.step} of {self.total} "
                 f"(epoch {self.epoch + 1})")

    def _train_names(self) -> list[str]:
        return [it.name for it in self.data.train]

    def _run(self, callbacks: list[Callable[[Trainer], None]]) -> TrainResult:
        self._setup()
        cfg = self.cfg
        self.output.parent.mkdir(parents=True, exist_ok=True)
        if self.dist.main:
            self._remove_stale_temporaries()
        if self.dist.main and not self.baseline and self.val_set:
            self.baseline = evaluate(nn.Identity(), self.val_set, torch.device("cpu"))
        if self.resume_state is None:
            self._save_checkpoint()
        bar = None
        if self.progress and self.dist.main:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.total, initial=self.step, unit="step", desc="train",
                       dynamic_ncols=True, file=sys.stderr)
        self._bar = bar
        t_start = time.perf_counter() - self.elapsed
        run_start = time.perf_counter()
        running = None
        try:
            while self.step < self.total:
                loss = self._train_step()
                self.step += 1
                self.epoch_step += 1
                self.loss_sum += loss
                self.loss_count += 1
                running = loss if running is None else 0.9 * running + 0.1 * loss
                self.elapsed = time.perf_counter() - t_start
                if bar is not None:
                    bar.update(1)
                    if self.step % 5 == 0 or self.step == self.total:
                        post = {"loss": f"{running:.3g}"}
                        if self.history and self.history[-1].get("val_psnr") is not None:
                            post["psnr"] = f"{self.history[-1]['val_psnr']:.2f}"
                        bar.set_postfix(post, refresh=False)
                for cb in callbacks:
                    cb(self)
                saved = False
                if self.epoch_step >= self.epoch_steps or self.step >= self.total:
                    self._end_epoch()
                    saved = True
                if (self.time_limit is not None and self._stop is None
                        and time.perf_counter() - run_start >= self.time_limit):
                    self._stop = _TIME_LIMIT
                stop = self._stop_now()
                if stop == _TIME_LIMIT:
                    if not saved and self.epoch_step:
                        self._end_epoch()  # the partial epoch is evaluated, the best kept
                    self.notes.append(f"stopped at the time limit of {self.time_limit:g} s, at "
                                      f"step {self.step} of {self.total}")
                    self.log(self.notes[-1])
                    break
                if stop is not None:
                    if not saved:
                        self._save_checkpoint()
                        if self.dist.main and self.best:
                            self._write_model(improved=False)
                    raise self._interrupted(stop)
                if not saved and cfg.save_every and self.step % cfg.save_every == 0:
                    self._save_checkpoint()
        finally:
            if bar is not None:
                bar.close()
            self._bar = None
        pictures = self._final_pictures() if self.dist.main else []
        metrics = self._file_metrics() if self.best else {}
        return TrainResult(self.output, self.ckpt_path, self.log_path, metrics, self.history,
                           self.notes, pictures)

    def _remove_stale_temporaries(self) -> None:
        """A run killed while writing leaves a temporary file beside its files (the file
        itself is intact: see :func:`convkit.io.atomic.replacing`); tidy them up."""
        from ..io.atomic import remove_stale

        remove_stale(self.output.parent)

    def _interrupted(self, signum: int) -> TrainingInterrupted:
        name = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}.get(signum, "a stop request")
        msg = (f"training stopped by {name} at step {self.step} of {self.total}; checkpoint "
               f"saved to {self.ckpt_path}; continue with --resume")
        return TrainingInterrupted(msg, signum or None, self.ckpt_path, self.step)

    def _stop_now(self) -> int | None:
        """The stop request, agreed on by every process (so that they stop at the same step)."""
        if self.dist.world == 1:
            return self._stop
        import torch.distributed as dist

        flag = torch.tensor([-1 if self._stop is None else self._stop], dtype=torch.int64)
        if self.device.type == "cuda":
            flag = flag.to(self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        v = int(flag.item())
        return None if v < 0 else v

    def _lr(self, step: int) -> float:
        cfg = self.cfg
        end = cfg.lr * cfg.lr_end
        t = min(1.0, step / max(1, self.total))
        return end + (cfg.lr - end) * 0.5 * (1.0 + math.cos(math.pi * t))

    def _train_step(self) -> float:
        cfg = self.cfg
        x, y = self.data.batch(self.local_batch, self.patch, self.context, self.gen,
                               flip=cfg.flip, border=cfg.border)
        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True)
        if self.lstsq is not None:
            return self._lstsq_step(x, y)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        for g in self.opt.param_groups:
            g["lr"] = self._lr(self.step)
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
            pred = self.net(x)
        err = clip_aware_error(pred.float(), y)
        loss = err.square().mean() if cfg.loss == "l2" else err.abs().mean()
        value = loss.detach()
        if self.dist.world > 1:
            import torch.distributed as dist

            value = value.clone()
            dist.all_reduce(value)
            value /= self.dist.world
        v = float(value.item())
        if not math.isfinite(v):
            self._nan(v)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        return v

    def _lstsq_step(self, x: Tensor, y: Tensor) -> float:
        """The linear model with an L2 loss is a least-squares problem: accumulate its normal
        equations over every crop seen and solve them, instead of descending a gradient.

        Gradient descent crawls here: photos hold little high-frequency energy, so the
        directions that set a kernel's fine structure get tiny gradients (the problem is
        ill-conditioned), while the exact solve recovers a linear chain's kernel to the
        precision of the 8-bit targets. Target pixels at 0 or 1 (clipped) are left out.
        """
        model = self.model
        k, c = model.config.kernel, model.config.channels
        with torch.no_grad():
            loss = clip_aware_error(model.net(x), y).square().mean()
            cols = torch.nn.functional.unfold(x.double(), k)  # (N, c*k*k, L), weight order
            n, f, positions = cols.shape
            ones = torch.ones(n, 1, positions, dtype=cols.dtype, device=cols.device)
            feats = torch.cat([cols, ones], 1).transpose(1, 2).reshape(-1, f + 1)
            t = y.double().reshape(n, c, positions).transpose(1, 2).reshape(-1, c)
            keep = ((t > 0) & (t < 1)).all(dim=1)
            feats, t = feats[keep], t[keep]
            da, db = feats.T @ feats, feats.T @ t
            if self.dist.world > 1:
                import torch.distributed as dist

                dist.all_reduce(da)
                dist.all_reduce(db)
            a, b = self.lstsq["a"], self.lstsq["b"]
            a += da.cpu()
            b += db.cpu()
            # a whisper of ridge keeps the solve defined before every direction has been seen
            ridge = 1e-9 * float(a.diagonal().mean()) + 1e-12
            w = torch.linalg.solve(a + ridge * torch.eye(f + 1, dtype=a.dtype), b)  # (f+1, c)
            model.conv.weight.copy_(w[:-1].T.reshape(c, c, k, k).to(model.conv.weight))
            model.conv.bias.copy_(w[-1].to(model.conv.bias))
        value = loss.detach()
        if self.dist.world > 1:
            import torch.distributed as dist

            dist.all_reduce(value)
            value /= self.dist.world
        v = float(value.item())
        if not math.isfinite(v):
            self._nan(v)
        return v

    def _nan(self, v: float) -> None:
        raise TrainingError(
            f"training stopped: the loss became {v} at step {self.step + 1} (epoch "
            f"{self.epoch + 1}); the last good checkpoint is kept in {self.ckpt_path} and the "
            f"best model in {self.output}; try a lower --lr (now {self.cfg.lr:g})"
        )

    # --- epoch end: validate, record, save ----------------------------------------------
    def _end_epoch(self) -> None:
        self.epoch += 1
        row: dict[str, Any] = {
            "epoch": self.epoch,
            "step": self.step,
            "train_loss": self.loss_sum / max(1, self.loss_count),
            "val_psnr": None,
            "val_ssim": None,
            "lr": self._lr(self.step),
            "seconds": round(self.elapsed, 3),
        }
        self.epoch_step, self.loss_sum, self.loss_count = 0, 0.0, 0
        if self.dist.main:
            if self.val_set:
                self.model.eval()
                m = evaluate(self.model, self.val_set, self.device)
                self.model.train()
                row["val_psnr"], row["val_ssim"] = m["psnr"], m["ssim"]
            self.history.append(row)
            # a tie (two perfect, infinite PSNRs, say) keeps the later, longer-trained model
            improved = self.best is None or (
                row["val_psnr"] is None or row["val_psnr"] >= self.best["psnr"]
            )
            flag = ""
            if improved:
                self.best = {"epoch": self.epoch, "psnr": row["val_psnr"],
                             "metrics": self._metrics(row)}
                flag = " (best, saved)" if row["val_psnr"] is not None else " (saved)"
            self._write_model(improved)
            val = ""
            if row["val_psnr"] is not None:
                val = f", val PSNR {row['val_psnr']:.2f} dB, SSIM {row['val_ssim']:.4f}"
            self.log(f"epoch {self.epoch}: step {self.step}/{self.total}, loss "
                     f"{row['train_loss']:.4g}{val}{flag}")
            self._write_log()
            self._curves()
        else:
            self.history.append(row)
        self._save_checkpoint()

    def _metrics(self, row: dict[str, Any]) -> dict[str, Any]:
        m = {
            "val_psnr": row["val_psnr"],
            "val_ssim": row["val_ssim"],
            "baseline_psnr": self.baseline.get("psnr"),
            "baseline_ssim": self.baseline.get("ssim"),
            "train_loss": row["train_loss"],
            "epoch": row["epoch"],
            "step": row["step"],
            "steps_total": self.total,
            "train_seconds": row["seconds"],
            "device": str(self.device),
        }
        return m  # a perfect PSNR stays inf here; the JSON writers turn it into null

    def _run_metrics(self) -> dict[str, Any]:
        """How far the whole run has got (the best weights' metrics say when they were taken)."""
        return {"run_steps": self.step, "run_epochs": self.epoch, "steps_total": self.total,
                "run_seconds": round(self.elapsed, 3), "device": str(self.device)}

    def _file_metrics(self) -> dict[str, Any]:
        """The metrics a file records: the best weights' and the run's so far."""
        return {**(self.best["metrics"] if self.best else {}), **self._run_metrics()}

    def _write_model(self, improved: bool) -> None:
        """Write ``OUT``: this step's weights when they are the best so far, else the best ones
        it holds, with their record of the run brought up to date."""
        if improved:
            save_model(self.model, self.output, self._file_metrics(), self._provenance())
            return
        if not self.output.exists():
            return
        try:
            update_metrics(self.output, self._file_metrics())
        except ValueError as e:  # replaced by something else meanwhile: leave it alone
            self.log(f"{e}; its record of the run is not updated")

    def _provenance(self) -> dict[str, Any]:
        cfg = self.cfg
        src = self.data.source
        return {
            "mode": cfg.mode,
            "chain": cfg.chain if cfg.mode == "mimic" else None,
            "sigma": cfg.sigma if cfg.mode == "denoise" else None,
            "data": str(Path(cfg.data).resolve()),
            "images": src.get("images"),
            "train_images": src.get("train_images"),
            "val_images": src.get("val_images"),
            "skipped": src.get("skipped"),
            "train_names": self._train_names(),
            "val_names": [it.name for it in self.data.val],
            "grey": cfg.grey,
            "patch": self.patch,
            "batch_size": cfg.batch_size,
            "loss": cfg.loss,
            "lr": cfg.lr,
            "seed": cfg.seed,
            "processes": self.dist.world,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }

    def _save_checkpoint(self) -> None:
        gens = [self.gen.get_state()]
        if self.dist.world > 1:
            import torch.distributed as dist

            gathered: list[Any] = [None] * self.dist.world
            dist.all_gather_object(gathered, gens[0])
            gens = gathered
        if not self.dist.main:
            return
        state = {
            "train_config": self.cfg.to_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "epoch_step": self.epoch_step,
            "loss_sum": self.loss_sum,
            "loss_count": self.loss_count,
            "elapsed": self.elapsed,
            "history": self.history,
            "best": self.best,
            "baseline": self.baseline,
            "optimizer": self.opt.state_dict(),
            "scaler": self.scaler.state_dict() if self.amp else None,
            "lstsq": self.lstsq,
            "gen_states": gens,
            "torch_rng": torch.get_rng_state(),
            "format_version": FORMAT_VERSION,
        }
        save_model(self.model, self.ckpt_path, self._file_metrics(), self._provenance(),
                   extra={"train_state": state})

    def _write_log(self) -> None:
        from .files import atomic_write

        text = "".join(json.dumps(json_safe(r)) + "\n" for r in self.history)
        atomic_write(self.log_path, lambda f: f.write(text.encode()))

    def _curves(self) -> None:
        from .plots import plot_curves

        try:
            plot_curves(self.history, sidecar(self.output, "curves.png"),
                        title=f"{self.output.name}: {self.cfg.mode}", baseline=self.baseline)
        except OSError as e:  # a picture is not worth failing the run for
            self.log(f"could not write the curves picture: {e}")

    def _final_pictures(self) -> list[Path]:
        from .plots import plot_kernels, plot_strip

        out = []
        best = load_model(self.output) if self.output.exists() else self.model
        try:
            p = sidecar(self.output, "kernels.png")
            plot_kernels(best.first_kernels(), p)
            out.append(p)
            if self.cfg.strip and self.val_set:
                name, x, y, levels = self.val_set[0]
                with torch.no_grad():
                    pred = quantize(best.to("cpu")(x).float(), levels)
                p = sidecar(self.output, "strip.png")
                scores = [psnr(x[0], y[0]), psnr(pred[0], y[0])]  # each against the target
                plot_strip(x[0], pred[0], y[0], p, labels=(
                    f"input: {float(scores[0]):.2f} dB", f"learned: {float(scores[1]):.2f} dB",
                    "target"))
                out.append(p)
            out.append(sidecar(self.output, "curves.png"))
        except OSError as e:
            self.log(f"could not write a picture: {e}")
        return out


def json_safe(row: dict[str, Any]) -> dict[str, Any]:
    """JSON has no inf or NaN (a perfect PSNR is inf): null instead."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in row.items()}


@contextmanager
def _stop_on_signals(trainer: Trainer):
    """SIGINT/SIGTERM ask the trainer to stop after the current step (and checkpoint); a second
    signal stops at once (the last checkpoint on disk stays intact)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {}

    def handler(signum, frame):
        if trainer._stop is not None:
            raise KeyboardInterrupt
        trainer.request_stop(signum)
        if trainer.dist.main:
            print("\nstopping after this step to save a checkpoint (again to quit at once)",
                  file=sys.stderr, flush=True)

    for s in (signal.SIGINT, signal.SIGTERM):
        old[s] = signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def train(
    data: str | Path, output: str | Path, *, resume: bool = False, force: bool = False,
    progress: bool = False, log: Callable[[str], None] | None = None,
    callbacks: Iterable[Callable[[Trainer], None]] = (), time_limit: float | None = None,
    **options: Any,
) -> TrainResult:
    """Train a learned filter on a folder and write it to ``output``.

    ``options`` are :class:`TrainConfig` fields; ``mode`` is inferred from ``chain`` (mimic)
    or ``sigma`` (denoise) when not given. With ``resume=True`` the stored settings are used and
    only ``epochs``, ``steps``, ``lr``, ``device``, ``amp``, ``save_every`` and ``strip`` may
    be given. ``time_limit`` (seconds of wall time) ends the run early, as its last step would:
    the best model and every output are written, and ``notes`` says so.

    >>> train("photos/", "blur.pt", chain="gaussian(sigma=2)", steps=200)  # doctest: +SKIP
    """
    if "mode" not in options:
        options["mode"] = ("mimic" if options.get("chain") else
                           "denoise" if options.get("sigma") else "pairs")
    if resume:
        overrides = {k: v for k, v in options.items() if k in RESUME_OVERRIDES}
        overrides["data"] = str(data)
        stored = Trainer(TrainConfig(str(data), str(output)), resume=True, overrides=overrides,
                         log=log, progress=progress, time_limit=time_limit)
        return stored.run(callbacks)
    cfg = TrainConfig(data=str(data), output=str(output), **options)
    return Trainer(cfg, force=force, log=log, progress=progress,
                   time_limit=time_limit).run(callbacks)


def main(argv: list[str] | None = None) -> None:
    """``python -m convkit.learn.train``: the ``convkit train`` command on its own."""
    from ..cli.learn import train_command

    train_command.main(args=argv, prog_name="convkit train")


if __name__ == "__main__":
    main()
