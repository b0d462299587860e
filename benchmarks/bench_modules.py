"""``module(x)`` as PyTorch users call it, next to ``convkit.process`` and kornia's modules.

    python benchmarks/bench_modules.py            # (2, 3, 1080, 1920) float32 batch, CPU
    python benchmarks/bench_modules.py --device cuda
    python benchmarks/bench_modules.py --own-threads   # convkit's workers own the cores

Rows: gaussian sigma 3, sharpen, box 15, median 5. Columns, all measured in this run, round by
round in a shuffled order (best of ``--rounds``, ms): ``module(x)`` under ``torch.no_grad()``,
``process(x, module)``, kornia's module; then with autograd (forward + backward of
``out.sum()``), convkit's module against kornia's. The ratios are what the engine issue's
targets are about:

* module / process <= 1.3 (no_grad);
* kornia / module >= 5 for gaussian, sharpen and box, >= 2 for median (no_grad);
* kornia / module >= 2 with autograd for gaussian, sharpen and box, gradients equal to the
  dense reference (checked here on a crop: max |difference| printed).
"""

from __future__ import annotations

import argparse

import torch
from bench_filters import timeit_rounds  # (this folder: the script's own)

import convkit
from convkit.nn.modules import reference

SHARPEN = [[0, -1, 0], [-1, 5, -1], [0, -1, 0]]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def rows(kornia, device: str):
    k = kornia.filters
    sharpen = torch.tensor([SHARPEN], dtype=torch.float32, device=device)
    yield ("gaussian sigma 3", convkit.get_filter("gaussian", sigma=3.0),
           k.GaussianBlur2d((19, 19), (3.0, 3.0), border_type="reflect"))
    yield ("sharpen", convkit.get_filter("sharpen"),
           lambda x: k.filter2d(x, sharpen, border_type="reflect"))
    yield ("box 15", convkit.get_filter("box", size=15), k.BoxBlur((15, 15), border_type="reflect"))
    yield ("median 5", convkit.get_filter("median", size=5), k.MedianBlur((5, 5)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--size", default="1080x1920", help="HxW (default 1080x1920)")
    ap.add_argument("--own-threads", action="store_true",
                    help="convkit.backends.opencv.own_threads() first, as the command line "
                         "runs (OpenCV's own threading off, process-wide, for kornia too)")
    args = ap.parse_args()
    import kornia

    h, w = map(int, args.size.split("x"))
    x = torch.rand(2, 3, h, w, device=args.device)
    print(f"# (2, 3, {h}, {w}) float32 on {args.device}, torch {torch.__version__}, "
          f"kornia {kornia.__version__}, {torch.get_num_threads()} torch threads; ms, best of "
          f"{args.rounds}")
    print(f"{'filter':18} {'module':>8} {'process':>8} {'kornia':>8} {'mod/proc':>9} "
          f"{'kornia/mod':>10} | {'grad mod':>8} {'grad kornia':>11} {'kornia/mod':>10} "
          f"{'grad err':>9}")
    for name, mod, km in rows(kornia, args.device):
        if args.own_threads and args.device == "cpu":
            from convkit.backends import opencv

            opencv.own_threads()
        mod = mod.to(args.device)

        def no_grad(f):
            def call():
                with torch.no_grad():
                    f()
                _sync(args.device)
            return call

        # the three columns interleaved round by round (as bench_filters times its peers), so
        # that a busy stretch of this shared machine hits them alike: timed one column after
        # the other, the first row's module(x) once took 54 ms against 24 ms in the next run
        t = timeit_rounds({"module": no_grad(lambda m=mod: m(x)),
                           "process": no_grad(lambda m=mod: convkit.process(x, m)),
                           "kornia": no_grad(lambda f=km: f(x))}, args.rounds, strict=True)
        t_mod, t_proc, t_k = (t[k] * 1e3 for k in ("module", "process", "kornia"))
        xg = x.clone().requires_grad_()

        def fb(f, xg=xg):
            xg.grad = None
            f(xg).sum().backward()
            _sync(args.device)

        t = timeit_rounds({"module": lambda m=mod: fb(m), "kornia": lambda f=km: fb(f)},
                          max(1, args.rounds // 2), strict=True)
        t_gm, t_gk = t["module"] * 1e3, t["kornia"] * 1e3
        crop = x[:1, :, :64, :80].double().requires_grad_()
        m64 = mod.double()
        (ga,) = torch.autograd.grad(m64(crop).sum(), crop)
        (gb,) = torch.autograd.grad(reference(m64, crop).sum(), crop)
        mod.float()
        print(f"{name:18} {t_mod:8.1f} {t_proc:8.1f} {t_k:8.1f} {t_mod / t_proc:9.2f} "
              f"{t_k / t_mod:10.1f} | {t_gm:8.1f} {t_gk:11.1f} {t_gk / t_gm:10.1f} "
              f"{(ga - gb).abs().max().item():9.1e}")


if __name__ == "__main__":
    main()
