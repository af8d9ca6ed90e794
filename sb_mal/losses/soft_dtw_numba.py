"""Soft-DTW recursion on the CPU as a numba kernel (the ``"numba"`` backend of :mod:`sb_mal.losses.soft_dtw`).

Importing this module needs numba (it comes with librosa; ``pip install numba``);
:mod:`sb_mal.losses.soft_dtw` imports it only when the backend is used and falls back to its
torch wavefront when numba is missing. The arithmetic is the torch path's: the recursion on
``Q = -R / gamma``, one anti-diagonal at a time, each cell's soft-min a logsumexp with its maximum
subtracted, the three soft-min weights of every cell saved for the backward (Cuturi & Blondel's
``E`` recursion run over the same diagonals, started at each item's own end ``(n_b, m_b)``).

What makes it fast on the CPU:

- one compiled loop nest per item (no per-diagonal tensor ops, no allocation per step), items split
  over ``torch.get_num_threads()`` threads (the kernels release the GIL);
- the cells of a diagonal are independent, so the inner loop over a diagonal is vectorised by LLVM
  (4 or 8 doubles at once). That needs ``exp`` and ``log`` written as plain arithmetic
  (:func:`_exp_nonpositive`, :func:`_log_1_to_3`, both within 1 ulp of float64's), as numba would
  otherwise call the scalar libm functions one element at a time;
- only the cells inside each item's lengths are visited, and the saved weights are stored compactly,
  diagonal after diagonal: ``3 * sum_b n_b * m_b`` elements in the input's dtype (float32 weights for
  float32 input), plus scratch of ``O(N + M)`` per item.

Arithmetic is float64 inside whatever the input dtype (values and gradients are rounded to it at
the end), so float32 input is at least as exact as the torch path's float32.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
import torch
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic
from torch.autograd.function import once_differentiable

__all__ = ["NumbaSoftDTW"]

# fused multiply-add allowed (more exact, not less); division by zero gives inf as in numpy, so that no
# exception branch keeps LLVM from vectorising the loops
_OPTIONS = {"error_model": "numpy", "fastmath": {"contract"}}
_LOG2E = 1.4426950408889634
_LN2_HI = 6.93147180369123816490e-01  # ln 2 split in two for an exact range reduction (Cody & Waite)
_LN2_LO = 1.90821492927058770002e-10
_LN2 = 0.6931471805599453
_SQRT2 = 1.4142135623730951


@intrinsic
def _float64_from_bits(typingctx, bits):
    """Reinterpret an int64's bits as a float64 (vectorises, unlike a call to ``math.ldexp``)."""

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(types.int64), codegen


@numba.njit(inline="always", **_OPTIONS)
def _exp_nonpositive(x):
    """``exp(x)`` for ``x <= 0`` (``-inf`` included), relative error below 3e-16.

    Arguments below -700 give ``exp(-700)`` (1e-304): next to the largest term of a soft-min, which
    is 1, such a weight vanishes from every sum it enters.
    """
    x = max(x, -700.0)
    k = math.floor(x * _LOG2E + 0.5)
    r = (x - k * _LN2_HI) - k * _LN2_LO  # |r| <= ln(2) / 2
    p = 1.0 / 6227020800.0  # Taylor series of exp(r) to r^13 / 13!: remainder below 5e-18
    p = p * r + 1.0 / 479001600.0
    p = p * r + 1.0 / 39916800.0
    p = p * r + 1.0 / 3628800.0
    p = p * r + 1.0 / 362880.0
    p = p * r + 1.0 / 40320.0
    p = p * r + 1.0 / 5040.0
    p = p * r + 1.0 / 720.0
    p = p * r + 1.0 / 120.0
    p = p * r + 1.0 / 24.0
    p = p * r + 1.0 / 6.0
    p = p * r + 0.5
    p = p * r + 1.0
    p = p * r + 1.0
    return p * _float64_from_bits((np.int64(k) + 1023) << 52)  # times 2^k, k in -1010..0


@numba.njit(inline="always", **_OPTIONS)
def _log_1_to_3(s):
    """``log(s)`` for ``1 <= s <= 3`` (a sum of three soft-min terms, the largest 1), error below 3e-16."""
    big = s > _SQRT2
    f = s * 0.5 if big else s  # f in [1/sqrt(2), 1.5]
    t = (f - 1.0) / (f + 1.0)  # log f = 2 atanh t, |t| <= 0.2
    t2 = t * t
    p = 1.0 / 25.0  # atanh series to t^25: remainder below 2e-18
    p = p * t2 + 1.0 / 23.0
    p = p * t2 + 1.0 / 21.0
    p = p * t2 + 1.0 / 19.0
    p = p * t2 + 1.0 / 17.0
    p = p * t2 + 1.0 / 15.0
    p = p * t2 + 1.0 / 13.0
    p = p * t2 + 1.0 / 11.0
    p = p * t2 + 1.0 / 9.0
    p = p * t2 + 1.0 / 7.0
    p = p * t2 + 1.0 / 5.0
    p = p * t2 + 1.0 / 3.0
    p = p * t2 + 1.0
    return 2.0 * t * p + (_LN2 if big else 0.0)


@numba.njit(nogil=True, cache=True, **_OPTIONS)
def _diagonal_forward(q_diag, q_up, q_left, neg_cost, w_diag, w_up, w_left, q):
    """One anti-diagonal: ``q = neg_cost + logsumexp(predecessors)`` and the soft-min weights."""
    for t in range(q.shape[0]):
        d, u, v = q_diag[t], q_up[t], q_left[t]
        top = max(d, max(u, v))
        ed, eu, ev = _exp_nonpositive(d - top), _exp_nonpositive(u - top), _exp_nonpositive(v - top)
        total = ed + eu + ev
        inv = 1.0 / total
        w_diag[t] = ed * inv
        w_up[t] = eu * inv
        w_left[t] = ev * inv
        q[t] = neg_cost[t] + top + _log_1_to_3(total)


_TILE = 32  # rows per tile when moving between the row-major cells and the diagonal order


@numba.njit(nogil=True, cache=True, **_OPTIONS)
def _diagonal_starts(nb, mb, starts):
    """``starts[k]``: where diagonal ``k`` (cells ``i + j = k``) begins in the compact diagonal order."""
    starts[2] = 0
    for k in range(2, nb + mb + 1):
        starts[k + 1] = starts[k] + min(nb, k - 1) - max(1, k - mb) + 1


@numba.njit(nogil=True, cache=True, **_OPTIONS)
def _to_diagonals(cells, nb, mb, starts, scale, out):
    """``out[starts[k] + i - lo_k] = cells[i - 1, k - i - 1] * scale``, tile of rows by tile (cache-friendly)."""
    for i0 in range(1, nb + 1, _TILE):
        i1 = min(nb, i0 + _TILE - 1)
        for k in range(i0 + 1, i1 + mb + 1):
            base = starts[k] - max(1, k - mb)
            for i in range(max(i0, k - mb), min(i1, k - 1) + 1):
                out[base + i] = cells[i - 1, k - i - 1] * scale


@numba.njit(nogil=True, cache=True, **_OPTIONS)
def _from_diagonals(diagonals, nb, mb, starts, scale, cells):
    """The inverse of :func:`_to_diagonals`: ``cells[i - 1, k - i - 1] = diagonals[...] * scale``."""
    for i0 in range(1, nb + 1, _TILE):
        i1 = min(nb, i0 + _TILE - 1)
        for k in range(i0 + 1, i1 + mb + 1):
            base = starts[k] - max(1, k - mb)
            for i in range(max(i0, k - mb), min(i1, k - 1) + 1):
                cells[i - 1, k - i - 1] = diagonals[base + i] * scale


@numba.njit(nogil=True, cache=True, **_OPTIONS)
def _forward(cost, n, m, gamma, weights, values, first, last):
    """Items ``first..last-1``: ``values[b] = R[b, n_b, m_b]``; ``weights[b, (diag, up, left)]`` compact."""
    rows, cols = cost.shape[1], cost.shape[2]
    ring = np.empty((3, rows + 2))  # Q on diagonals k, k-1, k-2 (index i; -inf outside the band)
    neg_cost = np.empty(rows * cols)  # -C / gamma of one item, in the compact diagonal order
    starts = np.empty(rows + cols + 2, dtype=np.int64)
    for b in range(first, last):
        nb, mb = n[b], m[b]
        _diagonal_starts(nb, mb, starts)
        _to_diagonals(cost[b], nb, mb, starts, -1.0 / gamma, neg_cost)
        ring[:, :] = -np.inf
        ring[0, 0] = 0.0  # R[0, 0] = 0 on diagonal 0
        for k in range(2, nb + mb + 1):
            lo, hi = max(1, k - mb), min(nb, k - 1)
            s, e = starts[k], starts[k + 1]
            cur, prev, prev2 = ring[k % 3], ring[(k - 1) % 3], ring[(k - 2) % 3]
            # predecessors of (i, k - i): (i-1, j-1) on k-2, (i-1, j) and (i, j-1) on k-1
            _diagonal_forward(prev2[lo - 1:hi], prev[lo - 1:hi], prev[lo:hi + 1], neg_cost[s:e],
                              weights[b, 0, s:e], weights[b, 1, s:e], weights[b, 2, s:e], cur[lo:hi + 1])
            cur[lo - 1] = -np.inf  # the band's borders: boundary cells (+inf in R) or stale values
            cur[hi + 1] = -np.inf
        values[b] = -gamma * ring[(nb + mb) % 3, nb]


@numba.njit(nogil=True, cache=True, **_OPTIONS)
def _accumulate(dst, src, w, count):
    """``dst[t] += src[t] * w[t]`` for ``t < count``."""
    for t in range(count):
        dst[t] += src[t] * w[t]


@numba.njit(nogil=True, cache=True, **_OPTIONS)
def _backward(weights, n, m, scale, grad, first, last):
    """Items ``first..last-1``: ``grad[b, i, j] = E[b, i, j] * scale[b]`` (cells beyond the lengths untouched)."""
    rows, cols = grad.shape[1], grad.shape[2]
    align = np.empty(rows * cols)  # E of one item, compact diagonal order (shared with the weights)
    starts = np.empty(rows + cols + 2, dtype=np.int64)
    for b in range(first, last):
        nb, mb = n[b], m[b]
        end = nb + mb
        _diagonal_starts(nb, mb, starts)
        align[nb * mb - 1] = 1.0  # E[n_b, m_b] = 1
        for k in range(end - 1, 1, -1):
            lo, hi = max(1, k - mb), min(nb, k - 1)
            s = starts[k]
            align[s:starts[k + 1]] = 0.0
            # successors of (i, j): (i+1, j) via its "up" weight and (i, j+1) via "left" on k+1, (i+1, j+1)
            # via "diagonal" on k+2; cell i of diagonal k sits at starts[k] + i - lo
            lo1, hi1 = max(1, k + 1 - mb), min(nb, k)
            a, z = max(lo, lo1 - 1), min(hi, hi1 - 1)  # (i+1, j) exists
            if z >= a:
                t = starts[k + 1] + a + 1 - lo1
                _accumulate(align[s + a - lo:], align[t:], weights[b, 1, t:], z - a + 1)
            a, z = max(lo, lo1), min(hi, hi1)  # (i, j+1) exists
            if z >= a:
                t = starts[k + 1] + a - lo1
                _accumulate(align[s + a - lo:], align[t:], weights[b, 2, t:], z - a + 1)
            if k + 2 <= end:
                lo2, hi2 = max(1, k + 2 - mb), min(nb, k + 1)
                a, z = max(lo, lo2 - 1), min(hi, hi2 - 1)  # (i+1, j+1) exists
                if z >= a:
                    t = starts[k + 2] + a + 1 - lo2
                    _accumulate(align[s + a - lo:], align[t:], weights[b, 0, t:], z - a + 1)
        _from_diagonals(align, nb, mb, starts, scale[b], grad[b])


_POOL: ThreadPoolExecutor | None = None


def _run_items(kernel, batch: int, *args) -> None:
    """``kernel(*args, first, last)`` over the batch, split across ``torch.get_num_threads()`` threads."""
    global _POOL
    threads = min(torch.get_num_threads(), batch)
    if threads <= 1:
        kernel(*args, 0, batch)
        return
    if _POOL is None or _POOL._max_workers < threads:
        _POOL = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="soft_dtw")
    bounds = [batch * t // threads for t in range(threads + 1)]
    futures = [_POOL.submit(kernel, *args, lo, hi) for lo, hi in zip(bounds, bounds[1:]) if hi > lo]
    for future in futures:
        future.result()


class NumbaSoftDTW(torch.autograd.Function):
    """``NumbaSoftDTW.apply(cost [B, N, M], n [B], m [B], gamma) -> [B]`` on CPU tensors.

    Same contract as :class:`sb_mal.losses.soft_dtw.SoftDTWFunction` (float32 or float64 ``cost``,
    long lengths ``1 <= n_b <= N``; cells beyond them get zero gradient, their values are never read).

    Example
    -------
    >>> cost = torch.tensor([[[0.0, 5.0], [5.0, 0.0]], [[1.0, 0.0], [9.0, 9.0]]], requires_grad=True)
    >>> value = NumbaSoftDTW.apply(cost, torch.tensor([2, 1]), torch.tensor([2, 2]), 0.01)
    >>> (value.round(decimals=3) + 0.0).tolist()  # item 1: its first row only
    [0.0, 1.0]
    >>> value.sum().backward()
    >>> cost.grad.round().tolist()  # the expected alignments; nothing beyond item 1's lengths
    [[[1.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [0.0, 0.0]]]
    """

    @staticmethod
    def forward(ctx, cost: torch.Tensor, n: torch.Tensor, m: torch.Tensor, gamma: float):
        if cost.device.type != "cpu":
            raise ValueError(f"the numba soft-DTW kernel runs on CPU tensors, got one on {cost.device}")
        batch, rows, cols = cost.shape
        data = cost.detach().contiguous().numpy()
        n_np = n.detach().cpu().numpy().astype(np.int64)
        m_np = m.detach().cpu().numpy().astype(np.int64)
        weights = torch.empty(batch, 3, rows * cols, dtype=cost.dtype)
        values = np.empty(batch)
        _run_items(_forward, batch, data, n_np, m_np, float(gamma), weights.numpy(), values)
        ctx.save_for_backward(weights)
        ctx.meta = (n_np, m_np, rows, cols)
        return torch.from_numpy(values).to(cost.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: torch.Tensor):
        (weights,) = ctx.saved_tensors
        n_np, m_np, rows, cols = ctx.meta
        batch = weights.shape[0]
        grad = torch.zeros(batch, rows, cols, dtype=weights.dtype)
        scale = grad_output.detach().cpu().double().contiguous().numpy()
        _run_items(_backward, batch, weights.numpy(), n_np, m_np, scale, grad.numpy())
        return grad, None, None, None
