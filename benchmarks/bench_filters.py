"""Filter speed side by side: convkit against OpenCV, Pillow, kornia and torchvision, one run.

    python benchmarks/bench_filters.py            # the table (1080p RGB uint8 in, uint8 out)
    python benchmarks/bench_filters.py --methods  # the measurements behind engine.py's rule
    python benchmarks/bench_filters.py --device cuda   # convkit and kornia on a GPU

Every column gets the same image in its own native layout (convkit and kornia: a (1, 3, H, W)
tensor; OpenCV: an (H, W, 3) array; Pillow: an RGB image) and returns uint8; the column
"convkit array" is convkit.process on OpenCV's (H, W, 3) array; kornia and
torchvision are timed with their uint8 -> float -> uint8 conversions, as a user would run them.
Peers are called with the closest filter they have (noted under the table; Pillow's
GaussianBlur is an approximation by box blurs, so it is not the same filter). Timings are
interleaved round by round (every column once per round, in a shuffled order) and the fastest
round is reported, so that load from other processes hits all columns alike and disturbs the
result least. Ratios are column / convkit: above 1 means convkit is faster.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import time
from collections.abc import Callable

import cv2
import numpy as np
import torch

import convkit
from convkit.backends import engine
from convkit.plan.ops import LinearOp

SHARPEN = np.array([[0, -1, 0], [-1, 5, -1], [0, -1, 0]], np.float32)
EMBOSS = np.array([[0, 0, 0], [0, 1, 0], [-1, 0, 0]], np.float32)
CHAIN = "gaussian(sigma=1) | sharpen | box(size=3) | emboss"
BLUR_CHAIN = "gaussian(sigma=1) | box(size=3) | gaussian(sigma=1) | box(size=3)"


def photo(w: int = 1920, h: int = 1080) -> np.ndarray:
    """scikit-image's astronaut (a public-domain NASA photo) resized to w x h, RGB uint8."""
    from skimage import data

    return cv2.resize(data.astronaut(), (w, h), interpolation=cv2.INTER_CUBIC)


def as_batch(img: np.ndarray, device: str) -> torch.Tensor:
    """An (H, W, 3) image as a (1, 3, H, W) tensor on ``device``."""
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None].to(device)


def timeit_rounds(fns: dict[str, Callable[[], object]], rounds: int,
                  slow: dict[str, int] | None = None, fill: float = 0.02,
                  strict: bool = False) -> dict[str, float]:
    """Fastest seconds per call of each function, measured round-robin after one warm-up (the
    least disturbed run: other processes on a shared machine only ever add time).

    A function faster than ``fill`` seconds is called back to back within a round until the
    round lasts about ``fill``, and the round's mean is its time, as ``timeit`` does: a single
    call of a millisecond is mostly the scheduler's wake-up latency, which nine samples do not
    average out (erode 5 measured 0.9 to 1.6 ms per call from run to run). Every column is
    timed this way, peers alike. A function that raises is left out of the result, with a
    line saying why; with ``strict``, its error is raised instead."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    number: dict[str, int] = {}
    for k, f in list(fns.items()):
        try:
            f()
        except Exception as e:  # a peer that fails is left out of the row, not the table
            if strict:
                raise
            print(f"  ({k} failed and is left out: {type(e).__name__}: {e})", flush=True)
            del fns[k], times[k]
            continue
        t0 = time.perf_counter()
        f()  # the first call pays one-off costs (plans, allocations); size rounds on the second
        number[k] = max(1, min(100, int(fill / max(time.perf_counter() - t0, 1e-6))))
    order = list(fns)
    rng = random.Random(0)
    for r in range(rounds):
        rng.shuffle(order)  # no column always runs right after the slow one
        for k in order:
            f, n = fns[k], number[k]
            if slow and r >= slow.get(k, rounds):
                continue
            t0 = time.perf_counter()
            for _ in range(n):
                f()
            times[k].append((time.perf_counter() - t0) / n)
    return {k: min(v) for k, v in times.items()}


# --- peers ------------------------------------------------------------------------------------
def _kornia():
    try:
        import kornia
    except ImportError:
        return None
    return kornia


def _to_f(x: torch.Tensor) -> torch.Tensor:
    return x.float().div_(255.0)


def _to_u8(y: torch.Tensor) -> torch.Tensor:
    return y.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)


def _cv_sobel_mag(img: np.ndarray) -> np.ndarray:
    gx = cv2.Sobel(img, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(img, cv2.CV_32F, 0, 1, ksize=3)
    return cv2.convertScaleAbs(cv2.magnitude(gx, gy))


def _cv_chain(img: np.ndarray) -> np.ndarray:
    # what an OpenCV user writes: four calls with float32 in between (no rounding inside)
    f = cv2.GaussianBlur(img.astype(np.float32), (7, 7), 1.0)
    f = cv2.filter2D(f, -1, SHARPEN)
    f = cv2.blur(f, (3, 3))
    f = cv2.filter2D(f, -1, EMBOSS, delta=128)
    return cv2.convertScaleAbs(f)  # saturate (values are >= 0 after the offset... mostly)


def rows(img: np.ndarray, device: str):
    """(row name, convkit spec or module, peers) for the 1080p rows."""
    from PIL import Image, ImageFilter

    kornia = _kornia()
    pil = Image.fromarray(img)
    sharpen_k = ImageFilter.Kernel((3, 3), SHARPEN.flatten().tolist(), scale=1)
    out = []

    def kor(fn):
        return None if kornia is None else fn

    out.append(("sharpen 3x3", "sharpen", {
        "OpenCV": lambda: cv2.filter2D(img, -1, SHARPEN),
        "Pillow": lambda: pil.filter(sharpen_k),
        "kornia": kor(lambda x: _to_u8(kornia.filters.filter2d(
            _to_f(x), torch.from_numpy(SHARPEN)[None].to(x.device), border_type="reflect"))),
    }))
    for sigma in (2, 8):
        k = convkit.functional.gaussian_ksize(sigma)
        out.append((f"gaussian sigma {sigma} ({k}x{k})", f"gaussian(sigma={sigma})", {
            "OpenCV": lambda s=sigma: cv2.GaussianBlur(img, (0, 0), s),
            "Pillow": lambda s=sigma: pil.filter(ImageFilter.GaussianBlur(s)),
            "kornia": kor(lambda x, s=sigma, k=k: _to_u8(kornia.filters.gaussian_blur2d(
                _to_f(x), (k, k), (float(s), float(s)), border_type="reflect"))),
            "torchvision": lambda x, s=sigma, k=k: _tv_gaussian(x, k, s),
        }))
    # an anisotropic gaussian: sigma 3 across, 1 down (19 wide, 7 high), as cv2's Size (w, h)
    out.append(("gaussian sigma [3, 1] (19x7)", "gaussian(sigma=[3, 1])", {
        "OpenCV": lambda: cv2.GaussianBlur(img, (19, 7), 3, sigmaY=1),
        "kornia": kor(lambda x: _to_u8(kornia.filters.gaussian_blur2d(
            _to_f(x), (7, 19), (1.0, 3.0), border_type="reflect"))),  # (h, w), (sy, sx)
        "torchvision": lambda x: _tv_gaussian(x, [19, 7], [3.0, 1.0]),
    }))
    out.append(("box 31x31", "box(size=31)", {
        "OpenCV": lambda: cv2.blur(img, (31, 31)),
        "Pillow": lambda: pil.filter(ImageFilter.BoxBlur(15)),
        "kornia": kor(lambda x: _to_u8(kornia.filters.box_blur(_to_f(x), (31, 31),
                                                               border_type="reflect"))),
    }))
    out.append(("sobel magnitude", "sobel", {
        "OpenCV": lambda: _cv_sobel_mag(img),
        "kornia": kor(lambda x: _to_u8(kornia.filters.sobel(_to_f(x), normalized=False))),
    }))
    out.append(("chain of 4 linear", CHAIN, {
        "OpenCV": lambda: _cv_chain(img),
        "Pillow": lambda: pil.filter(ImageFilter.GaussianBlur(1)).filter(sharpen_k).filter(
            ImageFilter.BoxBlur(1)).filter(ImageFilter.Kernel(
                (3, 3), EMBOSS.flatten().tolist(), scale=1, offset=128)),
        "kornia": kor(lambda x: _to_u8(_kornia_chain(kornia, _to_f(x)))),
    }))
    out.append(("median 5x5", "median(size=5)", {
        "OpenCV": lambda: cv2.medianBlur(img, 5),
        "Pillow": lambda: pil.filter(ImageFilter.MedianFilter(5)),
        "kornia": kor(lambda x: _to_u8(kornia.filters.median_blur(_to_f(x), (5, 5)))),
    }))
    square5 = np.ones((5, 5), np.uint8)
    out.append(("erode 5x5", "erode(size=5)", {
        "OpenCV": lambda: cv2.erode(img, square5),
        "Pillow": lambda: pil.filter(ImageFilter.MinFilter(5)),
        "kornia": kor(lambda x: _to_u8(kornia.morphology.erosion(
            _to_f(x), torch.ones(5, 5, device=x.device)))),
    }))
    return out


def _kornia_chain(kornia, x):
    x = kornia.filters.gaussian_blur2d(x, (7, 7), (1.0, 1.0), border_type="reflect")
    x = kornia.filters.filter2d(x, torch.from_numpy(SHARPEN)[None].to(x.device))
    x = kornia.filters.box_blur(x, (3, 3), border_type="reflect")
    return kornia.filters.filter2d(x, torch.from_numpy(EMBOSS)[None].to(x.device)) + 128 / 255


def _tv_gaussian(x: torch.Tensor, k, s) -> torch.Tensor:
    """torchvision's gaussian; ``k`` and ``s`` one value or [x, y] (width first)."""
    from torchvision.transforms.v2 import functional as TF

    ks = list(k) if isinstance(k, list) else [k, k]
    ss = [float(v) for v in s] if isinstance(s, list) else [float(s), float(s)]
    return TF.gaussian_blur(x, ks, ss)  # takes and returns uint8


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def table(rounds: int, device: str) -> list[dict]:
    img = photo()
    x = as_batch(img, device)
    results = []
    cols = ["convkit", "convkit array", "OpenCV", "Pillow", "kornia", "torchvision"]
    for name, spec, peers in rows(img, device):
        m = convkit.chain(spec).to(device)
        fns: dict[str, Callable[[], object]] = {}

        def ck(m=m):
            engine.apply(m, x)
            _sync(device)

        fns["convkit"] = ck
        if device == "cpu":
            # the (H, W, 3) array OpenCV gets, through convkit.process
            fns["convkit array"] = lambda m=m: convkit.process(img, m)
        for col, f in peers.items():
            if f is None:
                continue
            if col in ("kornia", "torchvision"):
                def run(f=f):
                    with torch.inference_mode():
                        f(x)
                    _sync(device)
                fns[col] = run
            elif device == "cpu":
                fns[col] = f
        slow = {"kornia": 3, "Pillow": 5}
        t = timeit_rounds(fns, rounds, slow)
        results.append({"row": name, **{c: t.get(c) for c in cols},
                        "plan": engine.explain(m, x)})
        _print_row(results[-1], cols)
    # a batch of 16 images of 512 x 512 through sharpen
    small = photo(512, 512)
    imgs = [np.ascontiguousarray(np.roll(small, i * 7, axis=1)) for i in range(16)]
    xb = torch.from_numpy(np.stack([a.transpose(2, 0, 1) for a in imgs])).to(device)
    m = convkit.chain("sharpen").to(device)
    kornia = _kornia()

    def ck_batch():
        engine.apply(m, xb)
        _sync(device)

    fns = {"convkit": ck_batch}
    if device == "cpu":
        fns["OpenCV"] = lambda: [cv2.filter2D(a, -1, SHARPEN) for a in imgs]
        from PIL import Image, ImageFilter

        pils = [Image.fromarray(a) for a in imgs]
        kern = ImageFilter.Kernel((3, 3), SHARPEN.flatten().tolist(), scale=1)
        fns["Pillow"] = lambda: [p.filter(kern) for p in pils]
    if kornia is not None:
        def kb():
            with torch.inference_mode():
                _to_u8(kornia.filters.filter2d(_to_f(xb), torch.from_numpy(SHARPEN)[None].to(
                    xb.device), border_type="reflect"))
            _sync(device)
        fns["kornia"] = kb
    t = timeit_rounds(fns, rounds, {"kornia": 3, "Pillow": 5})
    results.append({"row": "batch 16x512x512 sharpen", **{c: t.get(c) for c in cols},
                    "plan": engine.explain(m, xb)})
    _print_row(results[-1], cols)
    return results


_HEADER_DONE = False


def _print_row(r: dict, cols: list[str]) -> None:
    global _HEADER_DONE
    if not _HEADER_DONE:
        head = f"| {'row':28s} | " + " | ".join(f"{c:>20s}" for c in cols) + " |"
        print(head)
        print("|" + "-" * 30 + "|" + "|".join(["-" * 22] * len(cols)) + "|")
        _HEADER_DONE = True
    base = r["convkit"]
    cells = []
    for c in cols:
        t = r.get(c)
        if t is None:
            cells.append(f"{'-':>20s}")
        elif c == "convkit":
            cells.append(f"{t * 1e3:>17.1f} ms")
        else:
            cells.append(f"{t * 1e3:>9.1f} ms ({t / base:>5.1f}x)")
    print(f"| {r['row']:28s} | " + " | ".join(cells) + " |", flush=True)


def targets(results: list[dict], sizes: dict[str, float]) -> None:
    print("\nTargets (CPU): every row <= 1.5x OpenCV's time, >= 5x faster than kornia; fused "
          "chain of 4 <= 1.3x a single filter; gaussian and box flat in kernel size.")
    for r in results:
        cv, ko, ck, arr = r.get("OpenCV"), r.get("kornia"), r["convkit"], r.get("convkit array")
        vs_cv = f"{ck / cv:.2f}x OpenCV ({'ok' if ck <= 1.5 * cv else 'MISSED'})" if cv else ""
        vs_ko = f"kornia/convkit {ko / ck:.1f} ({'ok' if ko >= 5 * ck else 'MISSED'})" if ko \
            else ""
        on_array = f"array {arr / cv:.2f}x OpenCV" if arr and cv else ""
        print(f"  {r['row']:28s} {vs_cv:28s} {vs_ko:26s} {on_array}")
    by = {r["row"]: r["convkit"] for r in results}
    g2 = by.get("gaussian sigma 2 (13x13)")
    g8 = by.get("gaussian sigma 8 (49x49)")
    if g2 and g8:
        print(f"  gaussian sigma 8 / sigma 2: {g8 / g2:.2f}x (taps 49 / 13 = 3.8x; exact "
              f"separable passes grow with the taps)")
    # "flat": the cost grows by at most 1.5x while the taps grow several-fold (what is left is
    # the wider border: a kernel of radius r pads every side by r)
    for small, big, taps in (("gaussian sigma 16", "gaussian sigma 32", 193 / 97),
                             ("box 11", "box 101", 101 / 11)):
        a, b = sizes.get(small), sizes.get(big)
        if a and b:
            print(f"  {big} / {small}: {b / a:.2f}x for {taps:.1f}x the taps per side "
                  f"({'flat, ok' if b <= 1.5 * a else 'MISSED'})")
    single = max(by.get("sharpen 3x3", 0), _single_member_time())
    ch = by.get("chain of 4 linear")
    if ch:
        print(f"  chain of 4 / its slowest single member ({single * 1e3:.1f} ms): "
              f"{ch / single:.2f}x ({'ok' if ch <= 1.3 * single else 'MISSED'})")


_MEMBER: dict[str, float] = {}


def _single_member_time() -> float:
    return max(_MEMBER.values()) if _MEMBER else 0.0


def chain_members(rounds: int, device: str) -> None:
    img = photo()
    x = as_batch(img, device)
    fns = {}
    for spec in [s.strip() for s in CHAIN.split("|")]:
        m = convkit.chain(spec).to(device)
        fns[spec] = lambda m=m: (engine.apply(m, x), _sync(device))
    m = convkit.chain(CHAIN).to(device)
    fns["unfused chain"] = lambda: (engine.apply(m, x, fuse=False), _sync(device))
    fns["fused chain"] = lambda: (engine.apply(m, x), _sync(device))
    blur = convkit.chain(BLUR_CHAIN).to(device)
    fns["blur chain (fused)"] = lambda: (engine.apply(blur, x), _sync(device))
    t = timeit_rounds(fns, rounds)
    print(f"\nChain members alone ({CHAIN}):")
    for k, v in t.items():
        if "chain" not in k:
            _MEMBER[k] = v
        print(f"  {k:24s} {v * 1e3:7.1f} ms")
    print(f"  fused plan: {[(n[:40], b, me) for n, b, me in engine.explain(m, x)]}")
    print(f"  a chain of 4 separable blurs, {BLUR_CHAIN!r}: fused into "
          f"{[(n[:40], b, me) for n, b, me in engine.explain(blur, x)]}, "
          f"{t['blur chain (fused)'] * 1e3:.1f} ms = "
          f"{t['blur chain (fused)'] / t['gaussian(sigma=1)']:.2f}x gaussian(sigma=1) alone")


def sweep(rounds: int, device: str) -> dict[str, float]:
    """Cost against kernel size: gaussian sigma 1..32 and box 3..101, convkit beside OpenCV.
    Returns convkit's seconds per row name."""
    img = photo()
    x = as_batch(img, device)
    rows = [(f"gaussian sigma {s}", f"gaussian(sigma={s})",
             lambda s=s: cv2.GaussianBlur(img, (0, 0), s)) for s in (1, 2, 4, 8, 16, 32)]
    rows += [(f"box {n}", f"box(size={n})", lambda n=n: cv2.blur(img, (n, n)))
             for n in (3, 11, 31, 101)]
    print("\nCost against kernel size (1920x1080 RGB uint8; ms):")
    print(f"  {'filter':18s} {'taps':>7s} {'convkit':>9s} {'method':>10s} {'OpenCV':>9s}")
    out = {}
    for name, spec, cv in rows:
        m = convkit.chain(spec).to(device)
        fns = {"convkit": lambda m=m: (engine.apply(m, x), _sync(device))}
        if device == "cpu":
            fns["OpenCV"] = cv
        t = timeit_rounds(fns, rounds if "32" not in name else max(2, rounds // 3))
        k = m[0].weight.shape
        steps = engine.explain(m, x)
        cv_ms = f"{t['OpenCV'] * 1e3:9.1f}" if "OpenCV" in t else f"{'-':>9s}"
        print(f"  {name:18s} {k[0]:>3d}x{k[1]:<3d} {t['convkit'] * 1e3:9.1f} "
              f"{steps[0][2]:>10s} {cv_ms}", flush=True)
        out[name] = t["convkit"]
    return out


# --- the rule's measurements ------------------------------------------------------------------
def methods(rounds: int, device: str) -> None:
    """Time every method on a 1920x1080 RGB uint8 image per kernel shape: on the CPU the opencv
    backend (its planes shared among OpenCV's threads) and torch's fft, which the CPU rule
    sends large kernels to; on a GPU the torch backend."""
    img = photo()
    x = as_batch(img, device)
    rng = np.random.default_rng(0)
    print("1920x1080 RGB uint8, ms per call (best round); '-' = method cannot run it; the rule's "
          "pick last.")
    print(f"{'kernel':22s} " + " ".join(f"{m:>9s}" for m in engine.METHODS) + "   rule")
    cases = []
    for n in (3, 5, 7, 9, 13, 21, 31, 49, 97, 145, 193):
        g = np.exp(-((np.arange(n) - n // 2) ** 2) / (2 * (n / 6) ** 2))
        cases.append((f"rank1 {n}x{n}", np.outer(g, g) / g.sum() ** 2))
        if n <= 49:
            cases.append((f"box {n}x{n}", np.full((n, n), 1.0 / (n * n))))
            u, v = rng.normal(size=(2, n)), rng.normal(size=(2, n))
            cases.append((f"rank2 {n}x{n}", (u[0][:, None] * v[0] + u[1][:, None] * v[1]) / n))
        if n <= 31:
            cases.append((f"full {n}x{n}", rng.normal(size=(n, n)) / n))
    cpu = device == "cpu"
    for name, k in cases:
        mod = convkit.Kernel2d(k, scale=1.0).to(device)
        op = LinearOp(k)
        taps = k.shape[0] * k.shape[1]
        fns = {}
        for meth in engine.METHODS:
            if meth == "separable" and op.rank != 1:
                continue
            if meth == "box" and op.box_weight is None:
                continue
            if meth == "lowrank" and op.rank * (k.shape[0] + k.shape[1]) > taps:
                continue  # hopeless (full rank): minutes at 31x31
            if meth == "fft" and taps < 49:
                continue
            if meth == "direct" and taps > 49 and op.rank == 1:
                continue  # never better than separable for rank 1 (and slow on a GPU)
            backend = "torch" if (meth == "fft" or not cpu) else "opencv"
            fns[meth] = lambda meth=meth, b=backend, mod=mod: (engine.apply(
                mod, x, method=meth, backend=b), _sync(device))
        t = timeit_rounds(fns, rounds if taps < 2500 else max(2, rounds // 3))
        cells = " ".join(f"{t[m] * 1e3:9.1f}" if m in t else f"{'-':>9s}"
                         for m in engine.METHODS)
        best = min(t, key=t.get)
        rule = engine.choose_method(op, "cpu" if cpu else "torch")
        mark = "" if rule == best or t.get(rule, 1e9) <= 1.15 * t[best] else \
            f" (best: {best})"
        print(f"{name:22s} {cells}   {rule}{mark}", flush=True)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores; torch {torch.__version__} ({torch.get_num_threads()}"
            f" threads), OpenCV {cv2.__version__} ({cv2.getNumThreads()} threads), "
            f"Python {sys.version.split()[0]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--methods", action="store_true", help="time every method per kernel")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    print(machine())
    if args.methods:
        methods(args.rounds, args.device)
        return
    print(f"1920x1080 RGB uint8 in, uint8 out; best of {args.rounds} interleaved rounds "
          f"(kornia 3, Pillow 5); device {args.device}\n")
    results = table(args.rounds, args.device)
    chain_members(args.rounds, args.device)
    sizes = sweep(max(3, args.rounds // 2), args.device)
    print("\nPlans:")
    for r in results:
        print(f"  {r['row']:28s} {[(n[:40], b, m) for n, b, m in r['plan']]}")
    print("\nPeers: OpenCV sobel = Sobel dx, dy (CV_32F) + magnitude + convertScaleAbs; OpenCV "
          "chain = four calls on float32; Pillow chain = GaussianBlur(1) (box approximation), "
          "Kernel, BoxBlur(1), Kernel; Pillow has no Sobel magnitude; Pillow and OpenCV median "
          "replicate the border (convkit reflects, same cost).")
    if args.device == "cpu":
        targets(results, sizes)


if __name__ == "__main__":
    main()
