"""The ``convkit train`` and ``convkit info`` commands (click), for convkit's command group.

Exit status of ``train``: 0 done; 1 failed (no images, NaN loss, unreadable checkpoint: one line
on stderr); 2 usage error (bad option, a --mimic chain that does not parse); 130 stopped by
Ctrl-C and 143 by SIGTERM, with the checkpoint saved for ``--resume``.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

__all__ = ["train_command", "info_command", "commands"]

# the model module imports torch; these lists are repeated here so that --help stays fast
_ARCHS = ("residual", "linear")
_ACTIVATIONS = ("relu", "leaky_relu", "prelu", "gelu", "silu", "tanh")
_BORDERS = ("reflect", "symmetric", "replicate", "circular")

_TRAIN_EPILOG = """\b
Examples:
  convkit train photos/ -o blur.pt --mimic "gaussian(sigma=2) | sharpen"
  convkit train photos/ -o denoise.pt --denoise 25 --grey --epochs 30
  convkit train pairs/ -o look.pt          # pairs/input/NAME.png -> pairs/target/NAME.png
  convkit train photos/ -o blur.pt --resume   # continue a stopped run
  torchrun --nproc_per_node=2 -m convkit train photos/ -o m.pt --mimic median
\b
Then: convkit apply blur.pt IMAGES -o OUT, or "learned(path=blur.pt)" in a chain.
"""


def _check_chain(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    from ..nn.chains import chain

    try:
        chain(value)
    except (ValueError, TypeError) as e:
        raise click.BadParameter(str(e)) from None
    return value


def _check_sigma(ctx: click.Context, param: click.Parameter, value: float | None):
    if value is not None and not (math.isfinite(value) and value > 0):
        raise click.BadParameter(f"the noise sigma should be > 0 grey levels. Got {value}")
    return value


def _check_val(ctx: click.Context, param: click.Parameter, value: float):
    if not math.isfinite(value) or value < 0 or (value >= 1 and value != int(value)):
        raise click.BadParameter(
            f"should be a fraction in [0, 1) or a whole count of images. Got {value}"
        )
    return value


def _check_device(ctx: click.Context, param: click.Parameter, value: str) -> str:
    from ..api import resolve_device

    try:
        resolve_device(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    return value


@click.command(
    "train", epilog=_TRAIN_EPILOG, context_settings={"max_content_width": 100},
    short_help="Train a learned filter on a folder of images.",
)
@click.argument("data", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The model file to write (.pt, or .safetensors). The log, checkpoint and "
              "pictures go beside it.")
@click.option("--mimic", "chain", metavar="CHAIN", callback=_check_chain,
              help="Learn to do what this chain does: targets are made from DATA's images.")
@click.option("--denoise", "sigma", type=float, metavar="SIGMA", callback=_check_sigma,
              help="Learn to remove Gaussian noise of SIGMA grey levels (of 255).")
@click.option("--arch", type=click.Choice(_ARCHS), default="residual", show_default=True,
              help="residual: conv+activation layers predicting a residual; linear: one conv.")
@click.option("--depth", type=click.IntRange(1, 64), default=5, show_default=True,
              help="Conv layers of the residual net.")
@click.option("--width", type=click.IntRange(1, 1024), default=32, show_default=True,
              help="Feature channels between layers.")
@click.option("--kernel", type=click.IntRange(1, 63), default=3, show_default=True,
              help="Side of every conv kernel (odd).")
@click.option("--pool", type=click.Choice(["1", "2", "4"]), default="1", show_default=True,
              help="Run the middle layers at 1/POOL size (wider context, less compute).")
@click.option("--activation", type=click.Choice(_ACTIVATIONS), default="relu",
              show_default=True)
@click.option("--rgb", is_flag=True,
              help="See RGB jointly (colour-aware) instead of one channel at a time; the model "
              "then runs on grey and RGB images only.")
@click.option("--border", type=click.Choice(_BORDERS), default="reflect", show_default=True,
              help="How the model extends the image at its edges.")
@click.option("--patch", type=click.IntRange(min=1), default=64, show_default=True,
              help="Side of the random training crops.")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True,
              help="Crops per step (all processes together under torchrun).")
@click.option("--epochs", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--steps", type=click.IntRange(min=1), default=None,
              help="Total optimizer steps (instead of --epochs).")
@click.option("--epoch-steps", type=click.IntRange(min=1), default=None,
              help="Steps per epoch (default: one pass over the training pixels, at most 500).")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=2e-3,
              show_default=True, help="Adam's learning rate; it decays (cosine) to lr * lr-end. "
              "(--arch linear with the l2 loss is solved exactly by least squares instead.)")
@click.option("--lr-end", type=click.FloatRange(0, 1, min_open=True), default=0.01,
              show_default=True)
@click.option("--loss", type=click.Choice(["l1", "l2"]), default="l2", show_default=True)
@click.option("--val", type=float, default=0.1, show_default=True, callback=_check_val,
              help="Images held out for validation: a fraction, or a count.")
@click.option("--val-size", type=click.IntRange(min=8), default=256, show_default=True,
              help="Validation uses centre crops at most this big.")
@click.option("--grey", is_flag=True, help="Convert the images to grey first.")
@click.option("--flip/--no-flip", default=True, show_default=True,
              help="Random horizontal and vertical flips.")
@click.option("-r", "--recursive", is_flag=True, help="Find images in sub-folders too.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, callback=_check_device,
              help="auto, cpu, cuda or cuda:N.")
@click.option("--amp/--no-amp", default=True, show_default=True,
              help="float16 mixed precision (CUDA only).")
@click.option("--save-every", type=click.IntRange(min=0), default=0, show_default=True,
              help="Also checkpoint every N steps (0: after each epoch only).")
@click.option("--strip/--no-strip", default=True, show_default=True,
              help="Write an input | learned | target picture of a validation image.")
@click.option("--resume", is_flag=True,
              help="Continue the run that wrote -o (from its .last.ckpt), exactly.")
@click.option("--force", is_flag=True, help="Start over even if a checkpoint exists.")
@click.option("--time-limit", type=click.FloatRange(min=0, min_open=True), default=None,
              metavar="SECONDS", help="Stop training after this much wall time, keeping the "
              "best model and writing every output as at a normal end.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or epoch lines.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def train_command(ctx: click.Context, data: Path, output: Path, chain: str | None,
                  sigma: float | None, **opts: Any) -> None:
    """Train a learned filter on the images in DATA and save it to -o.

    \b
    Three ways to say what to learn:
      DATA/input/ + DATA/target/   pairs matched by file name (default)
      --mimic CHAIN                targets made by a chain of convkit filters
      --denoise SIGMA              remove Gaussian noise of SIGMA grey levels
    """
    if chain is not None and sigma is not None:
        raise click.UsageError("give --mimic or --denoise, not both")
    quiet, as_json = opts.pop("quiet"), opts.pop("as_json")
    time_limit = opts.pop("time_limit")
    resume, force = opts.pop("resume"), opts.pop("force")
    opts["pool"] = int(opts["pool"])
    if (opts.get("arch") == "linear" and chain is not None and not resume
            and ctx.get_parameter_source("kernel") != ParameterSource.COMMANDLINE):
        opts["kernel"] = _linear_side(chain)
    opts["channels"] = 3 if opts.pop("rgb") else 1
    mode = "mimic" if chain else "denoise" if sigma is not None else "pairs"
    from ..learn.train import RESUME_OVERRIDES, TrainingError, TrainingInterrupted, json_safe, train

    def log(msg: str) -> None:
        if not quiet:
            click.echo(msg, err=True)

    kwargs: dict[str, Any] = dict(opts, mode=mode, chain=chain, sigma=sigma)
    if resume:
        explicit = {k for k in ctx.params
                    if ctx.get_parameter_source(k) == ParameterSource.COMMANDLINE}
        fixed = {"data", "output", "resume", "force", "quiet", "as_json"}
        ignored = sorted(k for k in explicit - fixed if k not in RESUME_OVERRIDES)
        if ignored:
            names = {"chain": "mimic", "sigma": "denoise"}
            log("resuming with the checkpoint's settings; ignored: "
                + ", ".join("--" + names.get(k, k).replace("_", "-") for k in ignored))
        kwargs = {k: kwargs[k] for k in explicit if k in RESUME_OVERRIDES and k in kwargs}
    try:
        # the bar only on a terminal: redirected, it would write a line per refresh
        result = train(data, output, resume=resume, force=force,
                       progress=not quiet and sys.stderr.isatty(), log=log,
                       time_limit=time_limit, **kwargs)
    except TrainingInterrupted as e:
        click.echo(str(e), err=True)
        ctx.exit({2: 130, 15: 143}.get(e.signum or 0, 1))
    except KeyboardInterrupt:
        click.echo("stopped at once; the last checkpoint on disk is kept (--resume)", err=True)
        ctx.exit(130)
    except TrainingError as e:
        raise click.ClickException(str(e)) from None
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    except FileExistsError as e:  # (a file where the model's folder should be)
        raise click.ClickException(f"{output}: cannot make its folder, {e.filename} is a file "
                                   "in the way") from None
    except OSError as e:
        raise click.ClickException(f"{e.filename or output}: {e.strerror or e}") from None
    if int(os.environ.get("RANK", "0")) != 0:
        return  # under torchrun only rank 0 reports
    m = result.metrics
    if as_json:
        click.echo(json.dumps({
            "output": str(result.output), "checkpoint": str(result.checkpoint),
            "log": str(result.log), "metrics": json_safe(m), "notes": result.notes,
            "pictures": [str(p) for p in result.pictures],
        }))
        return
    if not quiet:
        click.echo(_summary(result), err=True)


def _linear_side(spec: str) -> int:
    """The side a linear model needs to mimic ``spec``: the chain's reach on both sides of the
    centre (a 9x9 chain needs 9), capped at the largest kernel a model may have. With the
    default 3 such a chain came out at 40 dB with no hint why."""
    from ..learn.model import LIMITS
    from ..nn.chains import chain as make_chain
    from ..pipeline.tiling import halo

    try:
        top, bottom, left, right = halo(make_chain(spec))
    except (TypeError, ValueError) as e:
        raise click.BadParameter(str(e), param_hint="--mimic") from None
    side = 2 * max(top, bottom, left, right, 0) + 1
    return min(side, LIMITS["kernel"][1])


def _summary(result) -> str:
    """The lines ``convkit train`` prints when the run is done: the model file and the step of
    its weights, then the whole run (the words of ``convkit info``'s training line)."""
    m = result.metrics
    parts = [f"wrote {result.output}"]
    if m.get("val_psnr") is not None:
        base = m.get("baseline_psnr")
        parts.append(f"val PSNR {m['val_psnr']:.2f} dB"
                     + (f" (input {base:.2f} dB)" if base is not None else "")
                     + f", SSIM {m['val_ssim']:.4f}")
        parts.append(f"best at epoch {m.get('epoch')}, step {m.get('step')}")
    else:
        parts.append(f"epoch {m.get('epoch')}, step {m.get('step')}")
    lines = ["; ".join(parts)]
    run = _run(m, None)
    if run["steps"] is not None:
        lines.append(f"run: {_run_text(m, run)}")
    lines.append(f"log {result.log}, checkpoint {result.checkpoint}")
    if result.pictures:
        lines.append("pictures: " + ", ".join(str(p) for p in result.pictures))
    return "\n".join(lines)


@click.command("info", short_help="Describe a model file: architecture, training, metrics.",
               epilog="\b\nExample:\n  convkit info blur.pt")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def info_command(model: Path, as_json: bool) -> None:
    """Show how the learned filter in MODEL is built, how it was trained and how well it does."""
    from ..learn.files import read_model_file
    from ..learn.model import LearnedFilter

    try:
        payload = read_model_file(model)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    net = LearnedFilter(payload["config_obj"])
    state = payload.get("train_state") or {}
    if as_json:
        from ..learn.train import json_safe

        out = {k: payload.get(k) for k in ("format_version", "convkit_version", "torch_version",
                                           "config", "provenance")}
        out["metrics"] = json_safe(payload["metrics"])
        out["parameters"] = net.num_params
        out["reach"] = net.reach[0]
        if state:
            out["checkpoint"] = {"step": state.get("step"), "epoch": state.get("epoch")}
        click.echo(json.dumps(out, indent=2))
        return
    click.echo(describe(model, payload, net))


def describe(path: Path, payload: dict[str, Any], net) -> str:
    """The text ``convkit info`` prints."""
    cfg, m, p = payload["config_obj"], payload["metrics"], payload["provenance"]
    state = payload.get("train_state")
    lines = [
        f"{path}: convkit learned filter (format {payload['format_version']}, written by "
        f"convkit {payload.get('convkit_version')}, torch {payload.get('torch_version')})",
        f"architecture: {cfg.describe()}, border {cfg.border}",
        f"parameters:   {net.num_params:,}; each output pixel sees {2 * net.reach[0] + 1}x"
        f"{2 * net.reach[0] + 1} input pixels",
    ]
    mode = p.get("mode")
    if mode:
        what = {"mimic": f"mimic of {p.get('chain')!r}",
                "denoise": f"denoising Gaussian noise of sigma {p.get('sigma')} grey levels",
                "pairs": "input/target pairs"}.get(mode, mode)
        lines.append(f"trained on:   {what}")
        lines.append(
            f"data:         {p.get('data')} ({p.get('images')} images: {p.get('train_images')} "
            f"for training, {p.get('val_images')} for validation"
            + (", grey" if p.get("grey") else "") + ")"
        )
        run = _run(m, state)
        lines.append(f"training:     {_run_text(m, run)}")
        lines.append(
            f"settings:     patch {p.get('patch')}, batch {p.get('batch_size')}, {p.get('loss')} "
            f"loss, lr {p.get('lr')}, seed {p.get('seed')}"
            + (f", {p.get('processes')} processes" if (p.get("processes") or 1) > 1 else "")
        )
        if m.get("step") is not None:
            lines.append(_weights_text(m, run, state))
    if m.get("val_psnr") is not None:
        base, base_ssim, ssim = m.get("baseline_psnr"), m.get("baseline_ssim"), m.get("val_ssim")
        lines.append(
            f"metrics:      validation PSNR {m['val_psnr']:.2f} dB"
            + (f", SSIM {ssim:.4f}" if ssim is not None else "")
            + (f" (input as is: {base:.2f} dB" if base is not None else "")
            + (f", SSIM {base_ssim:.4f}" if base is not None and base_ssim is not None else "")
            + (")" if base is not None else "")
        )
    elif mode and m.get("step") is None:
        lines.append("metrics:      " + ("none yet (no epoch finished)" if isinstance(state, dict)
                                         else "not recorded"))
    elif mode:
        lines.append("metrics:      no validation images"
                     + (f"; train loss {m['train_loss']:.4g}" if m.get("train_loss") else ""))
    if p.get("created"):
        lines.append(f"created:      {p['created']}")
    if isinstance(state, dict):
        lines.append(f"checkpoint:   training state at step {state.get('step')} (epoch "
                     f"{state.get('epoch')}); continue with convkit train --resume")
    if payload.get("odd_records"):
        lines.append("not understood: " + "; ".join(payload["odd_records"]))
    return "\n".join(lines)


def _run(m: dict[str, Any], state: Any) -> dict[str, Any]:
    """How far the whole run got: steps, epochs, seconds (None where the file does not say).

    Files of older convkits record only the saved weights' step; a checkpoint's training state
    still tells how far the run got."""
    st = state if isinstance(state, dict) else {}
    return {"steps": m.get("run_steps", st.get("step")),
            "epochs": m.get("run_epochs", st.get("epoch")),
            "seconds": m.get("run_seconds", st.get("elapsed")),
            "total": m.get("steps_total")}


def _run_text(m: dict[str, Any], run: dict[str, Any]) -> str:
    steps, total, epochs = run["steps"], run["total"], run["epochs"]
    device = f" on {m['device']}" if m.get("device") else ""
    if steps is None:
        planned = f"{total} steps planned{device}; " if total is not None else ""
        return f"{planned}how far the run got is not recorded in this file"
    parts = [f"{steps} of {total} steps" if total is not None else f"{steps} steps"]
    if _unfinished(run):
        parts[0] += " (unfinished)"
    if epochs is not None:
        parts.append(f"{epochs} epoch{'' if epochs == 1 else 's'}")
    if run["seconds"] is not None:
        parts.append(_secs(run["seconds"]) + device)
    return ", ".join(parts)


def _weights_text(m: dict[str, Any], run: dict[str, Any], state: Any) -> str:
    """Which weights the model file holds: the step they were taken at, and why those."""
    if m.get("val_psnr") is None:
        which = "the last epoch's"
    elif run["steps"] is None:
        which = "the best"
    else:
        which = "the best so far" if _unfinished(run) else "the best of the run"
    text = f"{which}, from step {m.get('step')} (epoch {m.get('epoch')})"
    if not isinstance(state, dict):
        return f"weights:      {text}"
    output = (state.get("train_config") or {}).get("output")
    return f"model file:   {text}" + (f", in {Path(output).name}" if output else "")


def _unfinished(run: dict[str, Any]) -> bool:
    steps, total = run["steps"], run["total"]
    return isinstance(steps, int) and isinstance(total, int) and steps < total


def _secs(s: Any) -> str:
    if not isinstance(s, (int, float)):
        return "?"
    if s < 10:
        return f"{s:.1f} s"
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


def commands() -> list[click.Command]:
    """The commands this module adds to ``convkit``'s group."""
    return [train_command, info_command]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(train_command.main())
