"""The ``convkit`` command line: one subcommand per registered filter, plus apply/list/show.

Every filter in the registry is a subcommand whose parameters are options::

    convkit sharpen photo.jpg                       # -> photo-sharpen.jpg beside it
    convkit gaussian --sigma 2 photos/ -o blurred/  # a folder, mirrored into blurred/
    convkit apply "gaussian(sigma=2) | sharpen" photos/ -r -o out/

The commands are made on demand from the registry, which does not import torch, so
``convkit --help`` and ``convkit list`` start in a fraction of a second; torch loads only when
images are filtered. Exit status: 0 every input written, 1 some inputs failed (each named on
stderr), 2 usage errors, 130/143 interrupted by SIGINT/SIGTERM.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from .._version import __version__
from ..io.formats import FORMATS
from ..kernels.registry import FilterInfo, Param, get_info, list_filters

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

# Commands of the learned-filter package, loaded only when run (their module imports torch).
_LEARN_COMMANDS = {
    "train": "Train a learned filter on a folder of images.",
    "info": "Describe a model file written by convkit train.",
}
def _learn_command(name: str) -> click.Command | None:
    """``train`` / ``info`` from convkit.cli.learn (``commands()``, or an attribute by name)."""
    from . import learn as learn_cli

    found = getattr(learn_cli, "commands", lambda: [])()
    for cmd in found:
        if cmd.name == name:
            return cmd
    cmd = getattr(learn_cli, name, None)
    return cmd if isinstance(cmd, click.Command) else None


# --------------------------------------------------------------------------------------------
# Options shared by every command that filters files
# --------------------------------------------------------------------------------------------



def _run_params() -> list[click.Parameter]:
    """INPUTS and the options of :func:`convkit.run`, fresh for each command."""
    return [
        click.Argument(["inputs"], nargs=-1, required=True, metavar="INPUTS..."),
        click.Option(["-o", "--output"], metavar="OUT",
                     help="Output file (one input) or folder (mirrors the inputs' layout). "
                          "Default: <stem>-<filter><ext> beside each input."),
        click.Option(["-r", "--recursive"], is_flag=True,
                     help="Walk folders into subfolders. (A ** in a pattern always matches "
                          "subfolders, with or without -r.)"),
        click.Option(["--in-place"], is_flag=True,
                     help="Overwrite the inputs with the results (written atomically)."),
        click.Option(["--skip-existing"], is_flag=True,
                     help="Skip inputs whose output exists already (resume a run)."),
        click.Option(["--overwrite"], is_flag=True,
                     help="With --in-place --format, replace an existing file of the new "
                          "name that is not an input (refused by default)."),
        click.Option(["--allow-truncated"], is_flag=True,
                     help="Filter damaged files (a JPEG with missing data, a file cut short) "
                          "as far as they decode, instead of failing them."),
        click.Option(["--format", "fmt"],
                     type=click.Choice(tuple(FORMATS), case_sensitive=False),
                     help="Output format. Default: the output's extension."),
        click.Option(["--quality"], type=click.IntRange(1, 100), default=95, show_default=True,
                     help="JPEG/WebP quality."),
        click.Option(["--compression"], type=click.Choice(["deflate", "lzw", "none"]),
                     default="deflate", show_default=True,
                     help="TIFF's lossless compression (PNG is always deflated)."),
        click.Option(["--batch-size"], type=click.IntRange(min=1), default=None,
                     help="Images of the same size filtered together (default: 8 on CUDA, 1 on "
                          "the CPU)."),
        click.Option(["--device"], default="auto", show_default=True,
                     help="auto (CUDA when present), cpu, cuda or cuda:N."),
        click.Option(["--decode"], type=click.Choice(["cpu", "gpu"], case_sensitive=False),
                     default="cpu", show_default=True,
                     help="Where JPEGs are decoded: cpu (libjpeg-turbo, the same pixels "
                          "everywhere) or gpu (nvJPEG on the CUDA device, a batch at a time; "
                          "its pixels differ, by up to a few tens of levels)."),
        click.Option(["--workers"], type=click.IntRange(min=1), default=None,
                     help="Decode and encode threads each (default: CPU count, 2 to 8)."),
        click.Option(["--max-pixels"], type=click.IntRange(min=1), default=None,
                     help="Refuse images with more pixels than this (decompression-bomb "
                          "guard; default 2^30, about 1.07 gigapixels)."),
        click.Option(["--max-memory"], metavar="SIZE",
                     help="Memory for the images in flight, e.g. 512M or 2G: a folder of "
                          "large images is decoded no further ahead than this allows (each "
                          "weighed by its header, x3; default a quarter of available memory, "
                          "at least 1G), and a huge image is filtered in tiles within it "
                          "(default for tiles: automatic, at most 512M)."),
        click.Option(["-q", "--quiet"], is_flag=True,
                     help="No progress bar and no summary line (errors are still printed)."),
        click.Option(["-v", "--verbose"], is_flag=True,
                     help="Say how each filter runs (backend and method)."),
        click.Option(["--dry-run"], is_flag=True,
                     help="Print what would be read and written (INPUT -> OUTPUT), write "
                          "nothing."),
        click.Option(["--json", "as_json"], is_flag=True,
                     help="Print the summary as JSON on stdout, with one record per file "
                          "(input, output, status, reason, seconds)."),
    ]


def _checked(spec: str) -> Any:
    """``spec`` checked before any file is touched (a bad parameter is a usage error): planned
    without torch where it is made of fixed filters, and then handed on as the string, so a
    run on the CPU never imports torch; otherwise built, and the module handed on."""
    from ..plan.specs import plan_spec

    if plan_spec(spec) is not None:
        return spec
    from ..nn.chains import chain

    return chain(spec)


def _execute(spec: Any, name: str, kw: dict[str, Any]) -> None:
    """Run the pipeline for a command and exit with its status."""
    quiet = kw.pop("quiet")
    as_json = kw.pop("as_json")
    verbose = kw.pop("verbose")
    dry_run = kw.pop("dry_run")
    fmt = kw.pop("fmt")
    fmt = fmt.lower() if fmt else None

    inputs, output = list(kw.pop("inputs")), kw.pop("output")
    with _std_streams(inputs, output, fmt, as_json or dry_run) as (inputs, output, names):
        def on_error(line: str) -> None:
            click.echo(f"error: {names(line)}", err=True)

        def on_warning(line: str) -> None:
            click.echo(f"warning: {names(line)}", err=True)

        try:
            summary = _run_pipeline(spec, inputs, output, fmt, name, quiet, dry_run, verbose,
                                    on_error, on_warning, kw)
        except click.UsageError as e:
            e.message = names(e.message)
            raise
        # --json and --dry-run name "-" too
        summary.errors = [names(line) for line in summary.errors]
        summary.warnings = [names(line) for line in summary.warnings]
        for record in summary.files:
            for key in ("input", "output", "reason"):
                if isinstance(record.get(key), str):
                    record[key] = names(record[key])
        if output is not None and names.stdout and summary.written:
            sys.stdout.buffer.write(Path(output).read_bytes())
            sys.stdout.flush()
    _finish(summary, as_json, dry_run, quiet)


class _Names:
    """Puts "-" back where a message names the temporary files behind stdin and stdout."""

    def __init__(self) -> None:
        self.swaps: dict[str, str] = {}
        self.stdout = False

    def __call__(self, line: str) -> str:
        for path, shown in self.swaps.items():
            line = line.replace(path, shown)
        return line


@contextmanager
def _std_streams(inputs: list[str], output: str | None, fmt: str | None, stdout_busy: bool):
    """``-`` as the input reads one image from stdin; ``-o -`` writes the result to stdout
    (the format from --format), as ImageMagick does. Both go through a temporary folder, so
    the pipeline sees ordinary files."""
    names = _Names()
    if "-" not in inputs and output != "-":
        yield inputs, output, names
        return
    if "-" in inputs and len(inputs) > 1:
        raise click.UsageError("- (stdin) must be the only input")
    if output == "-" and not fmt:
        raise click.UsageError("-o - writes the image to stdout: give its --format")
    if output == "-" and stdout_busy:
        raise click.UsageError("-o - writes the image to stdout, which --json or --dry-run "
                               "would use too")
    if inputs == ["-"] and output is None:
        raise click.UsageError("- reads the image from stdin: give -o FILE, or -o - for stdout")
    from ..pipeline.batches import is_pattern

    if output == "-" and (len(inputs) != 1 or os.path.isdir(inputs[0])
                          or is_pattern(inputs[0])):
        raise click.UsageError("-o - writes one image to stdout: give one input file")
    import tempfile

    with tempfile.TemporaryDirectory(prefix="convkit-") as tmp:
        if inputs == ["-"]:
            from ..io.images import sniff_format

            data = sys.stdin.buffer.read()
            ext = {"JPEG": ".jpg", "TIFF": ".tif", "WebP": ".webp", "GIF": ".gif",
                   "BMP": ".bmp"}.get(sniff_format(data) or "", ".png")
            src = os.path.join(tmp, "stdin" + ext)
            with open(src, "wb") as f:
                f.write(data)
            names.swaps[src] = "-"
            inputs = [src]
        if output == "-":

            output = os.path.join(tmp, "stdout" + FORMATS[fmt])
            names.swaps[output] = "-"
            names.stdout = True
        yield inputs, output, names


def _run_pipeline(spec, inputs, output, fmt, name, quiet, dry_run, verbose, on_error,
                  on_warning, kw):
    from ..backends import opencv
    from ..pipeline import batches as pipeline

    if not dry_run:
        opencv.own_threads()  # this process is convkit's: its workers get the cores alone
    try:
        return pipeline.run(
            spec, inputs, output, format=fmt, name=name,
            progress=False if quiet else None, on_error=on_error, on_warning=on_warning,
            dry_run=dry_run, on_info=(lambda line: click.echo(f"convkit: {line}", err=True))
            if verbose else None, **kw,
        )
    except ValueError as e:  # a bad spec, device, or options that do not fit together
        raise click.UsageError(" ".join(str(e).split())) from None


def _finish(summary, as_json: bool, dry_run: bool, quiet: bool) -> None:
    """Report the run (JSON, the dry run's plan, or the summary line) and exit with its
    status."""
    if as_json:
        click.echo(summary.to_json())
    elif dry_run:
        for f in summary.files:
            if f["status"] == "planned":
                click.echo(f"{f['input']} -> {f['output']}")
            elif f["status"] == "skipped":
                click.echo(f"{f['input']} -> {f['output']} (exists: skipped)")
    elif not quiet:
        click.echo(summary.line(), err=True)
    if summary.abandoned:
        # A signal came during one long filter call, still running in its thread: leave now
        # (every complete output is written, the unfinished one removed) instead of waiting
        # for it, as an interpreter exit would.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(summary.exit_code)
    sys.exit(summary.exit_code)


# --------------------------------------------------------------------------------------------
# One command per filter, built from its registry entry
# --------------------------------------------------------------------------------------------


def parse_value(text: str) -> Any:
    """A value written as in a chain spec: ``[[0,-1,0],[-1,5,-1],[0,-1,0]]``, a number, a word.

    Raises ValueError saying where ``text`` stops parsing.
    """
    from ..kernels.chainspec import SpecError
    from ..kernels.chainspec import parse_value as parse_spec_value

    try:
        value = parse_spec_value(text)
    except SpecError as e:
        where = str(e).rpartition(" at position ")[2]
        raise ValueError(f"{text!r} does not parse at position {where}") from None
    return value


def _option_for(info: FilterInfo, p: Param) -> click.Option:
    flag = "--" + p.name.replace("_", "-")
    default = "" if p.default is None else f" [default: {_show(p.default)}]"
    help_text = p.help + default

    def check(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is None:
            return None
        if p.kind in ("matrix", "pair", "ipair"):
            try:
                value = parse_value(value)
            except ValueError as e:
                raise click.BadParameter(str(e)) from None
        try:
            return p.check(value, info.name)
        except (TypeError, ValueError) as e:
            raise click.BadParameter(str(e)) from None

    if p.kind == "bool":
        return click.Option([f"{flag}/--no-{p.name.replace('_', '-')}"], default=None,
                            help=help_text, callback=check)
    types = {"float": click.FLOAT, "int": click.INT, "matrix": click.STRING,
             "path": click.STRING, "str": click.STRING, "pair": click.STRING,
             "ipair": click.STRING}
    ptype = click.Choice(p.choices) if p.kind == "choice" else types[p.kind]
    metavar = {"matrix": "ROWS", "path": "FILE", "pair": "X|[X,Y]",
               "ipair": "N|[W,H]"}.get(p.kind)
    return click.Option([flag, p.name], type=ptype, default=None, help=help_text,
                        callback=check, metavar=metavar)


def _show(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).lower() if isinstance(value, bool) else str(value)


def _filter_command(info: FilterInfo) -> click.Command:
    def callback(**kw: Any) -> None:
        from ..kernels.chainspec import format_call

        params = {p.name: kw.pop(p.name) for p in info.params}
        params = {k: v for k, v in params.items() if v is not None}
        try:  # parameters that only fail together (kernel: weights or path)
            info.check_params((), params)
            spec = _checked(format_call(info.name, params))
        except (TypeError, ValueError) as e:
            raise click.UsageError(" ".join(str(e).split())) from None
        _execute(spec, info.name, kw)

    example = info.example or f"convkit {info.name} photo.jpg"
    # the folder example carries the one-file example's parameters (kernel needs its weights)
    folder = example.replace("photo.jpg", "photos/ -r -o out/") if "photo.jpg" in example \
        else f"convkit {info.name} photos/ -r -o out/"
    help_text = (
        f"{info.description}\n\n"
        f"Example:\n\n\b\n  {example}\n  {folder}\n\n"
        f"Run `convkit show {info.name}` to see the kernel it applies."
    )
    cmd = click.Command(
        info.name, callback=callback, help=help_text, short_help=info.description,
        params=[_option_for(info, p) for p in info.params] + _run_params(),
        context_settings=CONTEXT_SETTINGS, no_args_is_help=True,
    )
    return cmd


# --------------------------------------------------------------------------------------------
# The group
# --------------------------------------------------------------------------------------------


class FilterGroup(click.Group):
    """A group whose subcommands are the fixed ones plus one per registered filter."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        fixed = list(self.commands) + list(_LEARN_COMMANDS)
        return fixed + [n for n in list_filters() if n not in self.commands]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands:
            return self.commands[cmd_name]
        if cmd_name in _LEARN_COMMANDS:
            return _learn_command(cmd_name)
        try:
            info = get_info(cmd_name)
        except ValueError:
            return None
        return _filter_command(info)

    def resolve_command(self, ctx, args):
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as e:
            if args and not args[0].startswith("-"):
                from difflib import get_close_matches

                from ..kernels.chainspec import excerpt

                close = get_close_matches(args[0], self.list_commands(ctx), n=3, cutoff=0.6) \
                    if len(args[0]) <= 40 else []
                hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
                raise click.UsageError(
                    f"No such command or filter {excerpt(args[0])}.{hint} Run `convkit list` "
                    "for the filters.", ctx
                ) from None
            raise e

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Short help without building the commands: the learn commands would import torch.
        fixed = [(n, self.commands[n].get_short_help_str(55)) for n in self.commands]
        fixed += list(_LEARN_COMMANDS.items())
        with formatter.section("Commands"):
            formatter.write_dl(fixed)
        rows = []
        for n in list_filters():
            if n not in self.commands:
                rows.append((n, _short(get_info(n).description, 55)))
        with formatter.section("Filters (convkit FILTER --help)"):
            formatter.write_dl(rows)


@click.group(
    cls=FilterGroup, context_settings=CONTEXT_SETTINGS,
    epilog="Examples:\n\n\b\n"
           "  convkit sharpen photo.jpg                  # writes photo-sharpen.jpg\n"
           "  convkit gaussian --sigma 2 photos/ -o out/\n"
           "  convkit apply \"gaussian(sigma=2) | sharpen\" photos/ -r -o out/\n"
           "  convkit show sharpen amount=1.5\n\n"
           "Exit status: 0 all written, 1 some inputs failed, 2 usage error, 130/143 "
           "interrupted.",
)
@click.version_option(__version__, "-V", "--version", prog_name="convkit")
def cli() -> None:
    """Image filters as conv layers: sharpen, blur, edges, pooling and your own kernels, on
    files and folders, on CPU or GPU."""


@cli.command("apply", context_settings=CONTEXT_SETTINGS, no_args_is_help=True,
             short_help="Filter images through a chain, kernel file or model.")
@click.argument("spec")
def apply_cmd(spec: str, **kw: Any) -> None:
    """Filter images through a chain SPEC: a chain string, a kernel .toml file or a model file.

    \b
    Examples:
      convkit apply "gaussian(sigma=2) | sharpen(amount=1.5)" photos/ -o out/
      convkit apply my_kernel.toml photo.png -o photo-mine.png
      convkit apply model.pt photos/ -r -o out/
    """
    from ..pipeline.batches import file_spec, output_name

    name = output_name(spec)
    try:
        checked = _checked(file_spec(spec))
    except (TypeError, ValueError) as e:
        raise click.BadParameter(" ".join(str(e).split()), param_hint="SPEC") from None
    _execute(checked, name, kw)


apply_cmd.params.extend(_run_params())


@cli.command("list", context_settings=CONTEXT_SETTINGS,
             short_help="List the filters and their parameters.")
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
def list_cmd(as_json: bool) -> None:
    """List every filter with a one-line description and its parameters.

    \b
    Example:
      convkit list
    """
    infos = [get_info(n) for n in list_filters()]
    if as_json:
        import json  # (1 ms of every start-up otherwise)

        click.echo(json.dumps([
            {"name": i.name, "description": i.description,
             "params": {p.name: {"kind": p.kind, "default": p.default, "help": p.help,
                                 **({"choices": list(p.choices)} if p.choices else {})}
                        for p in i.params}}
            for i in infos
        ], indent=2))
        return
    width = max(len(i.name) for i in infos) + 2
    for i in infos:
        click.echo(f"{i.name:<{width}}{i.description}")
        params = "  ".join(_param_usage(p) for p in i.params)
        if params:
            click.echo(" " * width + params)


def _param_usage(p: Param) -> str:
    if p.default is None:
        value = p.kind.upper()
    else:
        value = _show(p.default)
    return f"{p.name}={value}"


def _complete_filter(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    return [n for n in list_filters() if n.startswith(incomplete)]


@cli.command("show", context_settings=CONTEXT_SETTINGS, no_args_is_help=True,
             short_help="Show a filter's kernel, its sum and separability.")
@click.argument("name", shell_complete=_complete_filter)
@click.argument("params", nargs=-1, metavar="[KEY=VALUE]...")
def show_cmd(name: str, params: tuple[str, ...]) -> None:
    """Show the kernel filter NAME applies with PARAMS: its matrix, sum and separability.

    \b
    Examples:
      convkit show sharpen amount=1.5
      convkit show gaussian sigma=1 ksize=5
      convkit show kernel "weights=[[1,2,1],[2,4,2],[1,2,1]]"
    """
    try:
        info = get_info(name)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="NAME") from None
    kwargs = {}
    for item in params:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE. Got {item!r}", param_hint="PARAMS")
        try:
            kwargs[key.replace("-", "_")] = parse_value(text)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="PARAMS") from None
    try:
        module = info.build(**kwargs)
    except (TypeError, ValueError) as e:
        raise click.UsageError(" ".join(str(e).split())) from None
    click.echo(describe(module))


@cli.command("export", context_settings=CONTEXT_SETTINGS, no_args_is_help=True,
             short_help="Write a chain as an ONNX, torch.export or TorchScript file.")
@click.argument("spec")
@click.option("-o", "--output", required=True, metavar="FILE",
              help="The file to write: .onnx, .pt2 (torch.export) or .ts (TorchScript).")
@click.option("--channels", type=click.IntRange(min=1), default=3, show_default=True,
              help="Channels of the images the file will take.")
@click.option("--opset", type=click.IntRange(min=11), default=17, show_default=True,
              help="ONNX opset version.")
def export_cmd(spec: str, output: str, channels: int, opset: int) -> None:
    """Write the chain SPEC (a chain string, a kernel .toml file or a model file) as a file
    other runtimes load: its conv layers with height, width and batch left free; input and
    output float (B, C, H, W) on the [0, 1] scale, as convkit.process on a float tensor.

    \b
    Examples:
      convkit export "gaussian(sigma=2) | sharpen" -o chain.onnx
      convkit export model.pt -o model.pt2
    """
    from ..pipeline.batches import file_spec

    try:
        checked = _checked(file_spec(spec))
    except (TypeError, ValueError) as e:
        raise click.BadParameter(" ".join(str(e).split()), param_hint="SPEC") from None
    from ..nn.export import EXPORT_FORMATS, export

    if Path(output).suffix.lower() not in EXPORT_FORMATS:
        raise click.BadParameter(f"{output}: expected a file ending in "
                                 f"{', '.join(EXPORT_FORMATS)}", param_hint="-o")
    try:
        path = export(checked, output, channels=channels, opset=opset)
    except (TypeError, ValueError) as e:
        raise click.UsageError(" ".join(str(e).split())) from None
    except OSError as e:
        raise click.ClickException(f"{output}: cannot write ({e.strerror or e})") from None
    except Exception as e:  # an exporter's own refusal: its first line, nothing written
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise click.ClickException(f"{output}: cannot export {spec}: {first[:300]}") from None
    click.echo(f"{spec} -> {path}", err=True)


def describe(module, title: str | None = None) -> str:
    """Text for ``convkit show``: the matrix of a linear filter, or what a non-linear one does
    (``title``: how to name it; default its spec)."""
    import torch

    from ..nn.modules import (
        GradientMagnitude,
        Kernel2d,
        Median,
        Morphology,
        Pool2d,
        Rank,
        Sequence2,
    )

    if isinstance(module, torch.nn.Sequential) and len(module) == 1:
        return describe(module[0])  # a chain of one filter is that filter
    title = title or module.spec()
    if isinstance(module, Kernel2d):
        k = module.weight.double()
        kh, kw = k.shape
        lines = [f"{title}: {kh}x{kw} kernel applied by cross-correlation (no flip), anchor "
                 f"row {module.anchor[0]}, column {module.anchor[1]}, border {module.border}"]
        lines += _matrix(k)
        lines.append(f"sum: {_num(float(k.sum()))}")
        if module.bias:
            lines.append(f"offset: {_num(module.bias * 255)} grey levels (of 255) added")
        if max(kh, kw) > _MAX_SVD:
            # an SVD of a 4095x4095 kernel takes minutes: say what the filter was built from
            if getattr(module, "col", None) is not None:
                lines.append(f"separable: yes (built as a column of {kh} x a row of {kw} taps)")
            else:
                lines.append(f"separable: not computed (kernels over {_MAX_SVD}x{_MAX_SVD})")
            if module.negative:
                lines.append(f"negative values written to integer images as: {module.negative}")
            return "\n".join(lines)
        u, s, vh = torch.linalg.svd(k)
        rank = _rank(s)
        if rank == 1:
            col = u[:, 0] * s[0].sqrt()
            row = vh[0] * s[0].sqrt()
            if col.sum() < 0:
                col, row = -col, -row
            lines.append("separable: yes (rank 1) = column x row")
            lines.append("  column: " + " ".join(_num(float(v)) for v in col))
            lines.append("  row:    " + " ".join(_num(float(v)) for v in row))
        else:
            lines.append(f"separable: no (rank {rank})")
        if module.negative:
            lines.append(f"negative values written to integer images as: {module.negative}")
        return "\n".join(lines)
    if isinstance(module, GradientMagnitude):
        kx, ky = module.kx.double(), module.ky.double()
        transposed = torch.equal(ky, kx.t())
        lines = [f"{title}: non-linear, sqrt(gx^2 + gy^2) where gx correlates with the kernel "
                 "below and gy with " + ("its transpose" if transposed else "the second one")]
        lines += _matrix(kx)
        if not transposed:
            lines += ["and gy's:", *_matrix(ky)]
        lines.append(f"sum: {_num(float(kx.sum()))}")
        rank = max(_rank(torch.linalg.svdvals(kx)), _rank(torch.linalg.svdvals(ky)))
        lines.append("each derivative kernel is separable (rank 1)" if rank == 1 else
                     f"derivative kernel rank {rank}")
        return "\n".join(lines)
    if isinstance(module, Median):
        return f"{title}: non-linear, the median of each {module.size}x{module.size} " \
               "neighbourhood; no kernel matrix"
    if isinstance(module, Rank):
        return (f"{title}: non-linear, value number {module.rank + 1} (from the smallest) of "
                f"the {module.size * module.size} in each {module.size}x{module.size} "
                f"neighbourhood; border {module.border}")
    if isinstance(module, Morphology):
        what = {"erode": "minimum", "dilate": "maximum", "open": "erosion, then dilation",
                "close": "dilation, then erosion", "gradient": "dilation minus erosion",
                "tophat": "image minus its opening",
                "blackhat": "closing minus the image"}[module.op]
        kh, kw = module.fp.shape
        border = ("none (no pixel outside the image takes part)" if module.border == "none"
                  else module.border)
        lines = [f"{title}: non-linear, {what} under the {kh}x{kw} structuring element below "
                 f"(anchor row {kh // 2}, column {kw // 2}), {module.iterations} "
                 f"iteration(s), border {border}"]
        lines += _matrix(torch.from_numpy(module.fp.astype("float64")))
        return "\n".join(lines)
    if isinstance(module, Pool2d):
        (kh, kw), (sh, sw) = module.kernel_size, module.step
        shrink = f"{sh}" if sh == sw else f"{sw} across and {sh} down"
        return (f"{title}: {module.mode} pooling over {kw}x{kh} (width x height) windows, "
                f"stride {shrink}; the image shrinks by {shrink}")
    members = list(module.parts) if isinstance(module, Sequence2) else \
        list(module.children()) if isinstance(module, torch.nn.Sequential) else []
    if len(members) > 1:  # a filter made of several steps (edges: a blur, then a gradient)
        parts = [f"{title}: {len(members)} steps, applied in order:"]
        for i, member in enumerate(members, start=1):
            label = {Kernel2d: "kernel", GradientMagnitude: "gradient magnitude",
                     Median: "median"}.get(type(member))
            text = describe(member, label).splitlines()
            parts.append(f"{i}. {text[0]}")
            parts += ["   " + line for line in text[1:]]
        return "\n".join(parts)
    config = getattr(module, "config", None)
    if getattr(config, "arch", None) == "linear":  # a learned filter of one conv: a kernel
        w = module.conv.weight.detach().double()
        lines = [f"{title}: linear learned filter, one {w.shape[-2]}x{w.shape[-1]} kernel "
                 f"applied by cross-correlation (no flip), border {config.border}"]
        if w.shape[0] == 1 and w.shape[1] == 1:
            lines += _matrix(w[0, 0])
            lines.append(f"sum: {_num(float(w[0, 0].sum()))}")
        else:
            lines.append(f"  ({w.shape[0]} outputs x {w.shape[1]} inputs: RGB mixed jointly)")
        return "\n".join(lines)
    if config is not None:
        return f"{title}: non-linear learned filter ({config.describe()}); no single kernel"
    return f"{title}: non-linear ({type(module).__name__}); no single kernel matrix"


def _short(text: str, limit: int) -> str:
    """``text`` cut at a word boundary to at most ``limit`` characters."""
    if len(text) <= limit:
        return text
    return text[: limit - 3].rsplit(" ", 1)[0].rstrip(",;:") + "..."


def _rank(singular) -> int:
    """Numerical rank; the kernels are stored in float32, so 1e-6 of the largest is zero."""
    top = float(singular[0])
    return int((singular > top * 1e-6).sum()) if top > 0 else 0


def _num(v: float) -> str:
    if abs(v) < 5e-12:
        v = 0.0
    text = f"{v:.6g}"
    return "0" if text == "-0" else text


# Kernels larger than this are printed in part (their centre), and not factored by an SVD.
_MAX_PRINT = 15
_MAX_SVD = 255


def _matrix(k) -> list[str]:
    """The kernel's rows as text; a kernel over 15x15 shows its central 15x15, said so."""
    kh, kw = k.shape
    note = []
    if max(kh, kw) > _MAX_PRINT:
        y0, x0 = max(0, (kh - _MAX_PRINT) // 2), max(0, (kw - _MAX_PRINT) // 2)
        k = k[y0:y0 + _MAX_PRINT, x0:x0 + _MAX_PRINT]
        note = [f"  (the central {k.shape[0]}x{k.shape[1]} of {kh}x{kw}: rows {y0}-"
                f"{y0 + k.shape[0] - 1}, columns {x0}-{x0 + k.shape[1] - 1})"]
    cells = [[_num(float(v)) for v in row] for row in k]
    width = max(len(c) for row in cells for c in row)
    return note + ["  " + " ".join(c.rjust(width) for c in row) for row in cells]


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Python warnings as the command line shows them: one line in convkit's words. Pillow's
    own (malformed EXIF: 65535 entries, offsets past the end) are left out: the image is read
    all the same, and they would print two lines of Pillow's source per problem."""
    if "/PIL/" in filename.replace("\\", "/"):
        return
    click.echo(f"warning: {' '.join(str(message).split())}", err=True)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``convkit`` script and ``python -m convkit``."""
    import warnings

    warnings.showwarning = _show_warning
    # click's standalone mode turns Ctrl-C into "Aborted!" and exit 1; a Ctrl-C that comes
    # before the run has set up its own handler (while torch imports, say) should exit 130 too.
    try:
        code = cli.main(argv, prog_name="convkit", standalone_mode=False)
    except (KeyboardInterrupt, click.exceptions.Abort):
        click.echo("convkit: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    sys.exit(code if isinstance(code, int) else 0)
