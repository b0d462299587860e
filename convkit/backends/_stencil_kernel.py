"""The Triton kernel behind :mod:`convkit.backends.stencil` (imported only when that path runs, so
that ``import convkit`` never imports Triton).

One program filters a ``BH x BW`` tile of one image plane. Inner tiles read plain shifted
addresses; border tiles map the source rows and columns of each tap through the border rule
(vectors of BH and BW indices, OpenCV's ``borderInterpolate``), so every load stays inside the
plane and needs no mask, and the constant border loads a clamped index and replaces the value
by the fill. The taps accumulate in int32 (integer weights on an integer image: exact) or
float32; the result is stored once, as float32 or rounded to the integer dtype.

Only ``triton.language``'s builtins are used (``tl.full``, not ``tl.zeros``, which is itself a
``@triton.jit`` function): the tests run this kernel under Triton's interpreter in a process
that may have imported Triton for compiling already, and the interpreter cannot call library
functions that were decorated for compiling.
"""

import triton
import triton.language as tl


@triton.jit
def _source(p, n, BORDER: tl.constexpr):
    """Source index along an axis of length ``n`` for positions ``p`` (any integer, also far
    outside the axis). Codes: 0 constant (a clamped index; the caller replaces the value),
    1 replicate, 2 reflect (BORDER_REFLECT_101), 3 symmetric (BORDER_REFLECT), 4 circular.
    ``%`` is written so that it is right under C's and Python's sign rules alike."""
    if BORDER == 2:
        period = tl.maximum(2 * n - 2, 1)  # a single pixel (n == 1) repeats
        q = p % period
        q = tl.where(q < 0, q + period, q)
        q = tl.where(q >= n, period - q, q)
    elif BORDER == 3:
        period = 2 * n
        q = p % period
        q = tl.where(q < 0, q + period, q)
        q = tl.where(q >= n, period - 1 - q, q)
    elif BORDER == 4:
        q = p % n
        q = tl.where(q < 0, q + n, q)
    else:
        q = tl.minimum(tl.maximum(p, 0), n - 1)
    return q


@triton.jit
def _tap(ptrs, IN_KIND: tl.constexpr, INT: tl.constexpr):
    """One tap's samples: int32 (INT: integer weights on an integer image) or float32."""
    v = tl.load(ptrs)
    if IN_KIND == 1:
        v = v.to(tl.int32) & 0xFFFF  # uint16 read through an int16 view
    elif INT:
        v = v.to(tl.int32)
    if not INT:
        v = v.to(tl.float32)
    return v


@triton.jit
def _finish(acc, acc2, bias, offset, top, OUT_KIND: tl.constexpr, NEG: tl.constexpr,
            TWO: tl.constexpr, INT: tl.constexpr):
    """The accumulated sum -> the stored value: float32, or the rounded, saturated integer.
    INT: the sum is an exact int32, and bias, offset and top are ints."""
    y = acc
    if TWO:
        y = tl.sqrt_rn(acc * acc + acc2 * acc2)  # correctly rounded, as torch.sqrt
    y = y + bias
    if OUT_KIND != 2:
        if NEG == 1:
            y = tl.abs(y)
        elif NEG == 2:
            y = y + offset
        if INT:
            q = tl.minimum(tl.maximum(y, 0), top)
        else:
            # Saturating first and rounding after equals torch's round-then-clamp: both
            # bounds are integers. Then round half to even the IEEE way: adding 1.5 * 2**23
            # leaves no fraction bits to a float32 in [0, 2**22], and subtracting it back is
            # exact (libdevice.rint would be one instruction, but Triton's interpreter, which
            # the tests use, does not run libdevice).
            y = tl.minimum(tl.maximum(y, 0.0), top)
            y = (y + 12582912.0) - 12582912.0
            q = y.to(tl.int32)
        if OUT_KIND == 0:
            y = q.to(tl.uint8)
        else:
            y = q.to(tl.int16)  # keeps the low 16 bits: the uint16 value
    return y


@triton.jit(do_not_specialize=["one"])
def stencil(
    x_ptr, y_ptr, w_ptr, w2_ptr, one,
    C, H, W,
    xsb, xsc, xsh, xsw,
    ysb, ysc, ysh, ysw,
    fill, bias, offset, top,
    KH: tl.constexpr, KW: tl.constexpr, AY: tl.constexpr, AX: tl.constexpr,
    BORDER: tl.constexpr, IN_KIND: tl.constexpr, OUT_KIND: tl.constexpr,
    NEG: tl.constexpr, TWO: tl.constexpr, UNIT: tl.constexpr, INT: tl.constexpr,
    TAPS: tl.constexpr, TAPS2: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr,
):
    """``y = correlate(pad(x), w) + bias`` (or ``sqrt(corr(w)**2 + corr(w2)**2) + bias`` when
    TWO) for one tile. IN_KIND/OUT_KIND: 0 uint8, 1 uint16 (passed as int16), 2 float32.
    Integer output: NEG 1 takes the absolute value, 2 adds ``offset``; then saturate to
    [0, top] and round half to even. Weights are pre-scaled to the output's units.

    A tile whose taps all fall inside the plane (almost every tile of a large image) reads
    plain shifted addresses: the compiler then sees that tap (i, j) of row r and tap (i + 1, j)
    of row r - 1 are the same load, so each thread loads its column strip of rows once per
    kernel column rather than once per tap. Tiles at the border map every source row and column
    through the border rule.

    ``one`` is a runtime 1 that Triton never specialises: the column index is multiplied by it
    so that the compiler cannot prove the columns contiguous. It then gives each thread a column
    strip (BH rows of one column), whose vertically neighbouring taps share loads, instead of
    16 adjacent columns of one row read as a vector, whose shifted taps cannot use that vector
    and are loaded again byte by byte (41 instructions per pixel for a 3x3 on uint8 against
    28, counted in the sm_90 SASS by benchmarks/stencil_sass.py's method).

    UNIT: the column stride is 1, so the column taps are constant offsets of one pointer per
    row. INT: integer weights (int32 at w_ptr), an integer image and output, whole-number fill,
    bias and offset: the sum is accumulated exactly in int32 and needs no rounding (fill, bias,
    offset and top come as ints).

    TAPS, TAPS2: which taps of the first and second kernel are non-zero, bit ``i * KW + j``
    for tap (i, j). The weights stay runtime values (one compile serves every amount of
    sharpening), but a zero tap is neither loaded nor multiplied: sharpen's four corners, the
    derivative kernels' zero row or column."""
    plane = tl.program_id(2)
    b = plane // C
    c = plane % C
    x_base = x_ptr + b.to(tl.int64) * xsb + c.to(tl.int64) * xsc
    y_base = y_ptr + b.to(tl.int64) * ysb + c.to(tl.int64) * ysc
    r0 = tl.program_id(1) * BH
    c0 = tl.program_id(0) * BW
    rows = r0 + tl.arange(0, BH)
    cols = c0 + tl.arange(0, BW) * one
    out = y_base + rows[:, None] * ysh + cols[None, :] * ysw

    if INT:
        acc = tl.full((BH, BW), 0, tl.int32)
    else:
        acc = tl.full((BH, BW), 0.0, tl.float32)
    acc2 = tl.full((BH, BW), 0.0, tl.float32)
    inside = ((r0 >= AY) & (r0 + BH + (KH - 1 - AY) <= H)
              & (c0 >= AX) & (c0 + BW + (KW - 1 - AX) <= W))
    if inside:
        for i in tl.static_range(KH):
            row = x_base + ((rows + (i - AY)) * xsh)[:, None]
            for j in tl.static_range(KW):
                if ((TAPS | TAPS2) >> (i * KW + j)) & 1:
                    if UNIT:
                        v = _tap(row + cols[None, :] + (j - AX), IN_KIND, INT)
                    else:
                        v = _tap(row + ((cols + (j - AX)) * xsw)[None, :], IN_KIND, INT)
                    if (TAPS >> (i * KW + j)) & 1:
                        acc += v * tl.load(w_ptr + (i * KW + j))
                    if (TAPS2 >> (i * KW + j)) & 1:
                        acc2 += v * tl.load(w2_ptr + (i * KW + j))
        tl.store(out, _finish(acc, acc2, bias, offset, top, OUT_KIND, NEG, TWO, INT))
    else:
        for i in tl.static_range(KH):
            pr = rows + (i - AY)
            roff = _source(pr, H, BORDER) * xsh
            rin = (pr >= 0) & (pr < H)
            for j in tl.static_range(KW):
                if ((TAPS | TAPS2) >> (i * KW + j)) & 1:
                    pc = cols + (j - AX)
                    v = _tap(x_base + roff[:, None] + (_source(pc, W, BORDER) * xsw)[None, :],
                             IN_KIND, INT)
                    if BORDER == 0:
                        cin = (pc >= 0) & (pc < W)
                        v = tl.where(rin[:, None] & cin[None, :], v, fill)
                    if (TAPS >> (i * KW + j)) & 1:
                        acc += v * tl.load(w_ptr + (i * KW + j))
                    if (TAPS2 >> (i * KW + j)) & 1:
                        acc2 += v * tl.load(w2_ptr + (i * KW + j))
        mask = (rows < H)[:, None] & (cols < W)[None, :]
        tl.store(out, _finish(acc, acc2, bias, offset, top, OUT_KIND, NEG, TWO, INT), mask=mask)
