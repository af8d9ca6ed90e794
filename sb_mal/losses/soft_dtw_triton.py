"""Soft-DTW recursion on the GPU as Triton kernels (the ``"triton"`` backend of :mod:`sb_mal.losses.soft_dtw`).

Importing this module needs Triton (it ships with torch's CUDA builds); :mod:`sb_mal.losses.soft_dtw`
imports it only when the backend is used and falls back to its torch wavefront without it.

The arithmetic is the torch path's (the recursion on ``Q = -R / gamma``, a logsumexp with its
maximum subtracted per cell, the three soft-min weights of every cell saved for Cuturi & Blondel's
backward recursion, started at each item's own end). One program per batch item walks the
anti-diagonals ``k = 2 .. n_b + m_b``: all cells of a diagonal at once (one lane each, in chunks of
``BLOCK`` lanes when the diagonal is wider), then a barrier before the next diagonal, which reads
the two before it. The last three diagonals of ``Q`` (forward) or ``E`` (backward) live in a small
per-item scratch in global memory (L1/L2-resident); the saved weights take ``3 * K * W`` elements
per item (``K = N + M + 1`` diagonals of width ``W = min(N, M) + 2``, about ``6 N M`` for ``N = M``,
zero outside the item's cells), in the input's dtype; the backward writes the ``[B, N, M]`` gradient.
Memory is ``O(B * N * M)``; forward and backward are one kernel launch each.

Float32 input is computed in float32 (as the torch path does), float64 in float64.

On the CPU the kernels run under Triton's interpreter when ``TRITON_INTERPRET=1`` is set (the
tests use it to check the kernels' arithmetic against the float64 reference); this is slow and
meant for checking only.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

__all__ = ["TritonSoftDTW", "interpreting"]

_MAX_BLOCK = 1024  # lanes per chunk of a diagonal


def interpreting() -> bool:
    """Whether ``TRITON_INTERPRET=1`` is set (then the kernels run on CPU tensors, interpreted)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


# Each diagonal reads what other lanes of the same program wrote for the diagonals before it, through the
# scratch ring in global memory: the stores, then tl.debug_barrier() (bar.sync), then plain loads in the next
# iteration, in program order. bar.sync makes a block's global writes visible to the whole block (all its threads
# share the SM's L1), so the loads may hit L1; the kernels are launched with num_stages=1 so that no load is
# software-pipelined ahead of the barrier (tests/test_soft_dtw.py checks the compiled PTX has no cp.async).
#
# The kernels use Triton's builtins only (no @triton.jit helpers of triton.language such as tl.zeros): those
# are compiled or interpreted depending on TRITON_INTERPRET when triton.language is first imported, and a
# kernel must work both ways in one process (the tests interpret and compile).
def _forward_kernel(cost_ptr, n_ptr, m_ptr, gamma_ptr, ring_ptr, w_ptr, out_ptr, stride_b, stride_r, stride_c,
                    width, diagonals, BLOCK: tl.constexpr, CHUNKS: tl.constexpr):
    b = tl.program_id(0)
    nb = tl.load(n_ptr + b).to(tl.int32)
    mb = tl.load(m_ptr + b).to(tl.int32)
    gamma = tl.load(gamma_ptr)  # (gamma, 1 / gamma) in the input's dtype (a float argument would be float32)
    inv_gamma = tl.load(gamma_ptr + 1)
    lanes = tl.arange(0, BLOCK)
    ring = ring_ptr + b * 3 * width  # Q on diagonals k % 3 (index i along the diagonal)
    weights = w_ptr + b * 3 * diagonals * width  # [3 (diag, up, left), K, W]
    cost = cost_ptr + b * stride_b
    for c in range(CHUNKS):  # diagonal 0 holds R[0, 0] = 0; diagonal 1 only boundary cells (+inf in R)
        i = c * BLOCK + lanes
        tl.store(ring + i, tl.where(i == 0, 0.0, float("-inf")).to(ring_ptr.dtype.element_ty), mask=i < width)
        tl.store(ring + width + i, tl.full([BLOCK], float("-inf"), ring_ptr.dtype.element_ty), mask=i < width)
    tl.debug_barrier()
    for k in range(2, nb + mb + 1):
        lo = tl.maximum(k - mb, 1)
        hi = tl.minimum(nb, k - 1)
        cur = ring + (k % 3) * width
        prev = ring + ((k - 1) % 3) * width
        prev2 = ring + ((k - 2) % 3) * width
        for c in range(CHUNKS):
            i = c * BLOCK + lanes
            inside = (i >= lo) & (i <= hi)
            # predecessors of (i, k - i): (i-1, j-1) on k-2, (i-1, j) and (i, j-1) on k-1
            d = tl.load(prev2 + i - 1, mask=inside, other=0.0)
            u = tl.load(prev + i - 1, mask=inside, other=0.0)
            v = tl.load(prev + i, mask=inside, other=0.0)
            cst = tl.load(cost + (i - 1) * stride_r + (k - i - 1) * stride_c, mask=inside, other=0.0)
            top = tl.maximum(d, tl.maximum(u, v))  # finite inside: every cell has a finite predecessor
            ed = tl.exp(d - top)
            eu = tl.exp(u - top)
            ev = tl.exp(v - top)
            total = ed + eu + ev
            q = top + tl.log(total) - cst * inv_gamma
            inv = tl.where(inside, 1.0 / total, 0.0)  # zero weights outside the band
            tl.store(cur + i, tl.where(inside, q, float("-inf")), mask=i < width)
            tl.store(weights + k * width + i, ed * inv, mask=i < width)
            tl.store(weights + (diagonals + k) * width + i, eu * inv, mask=i < width)
            tl.store(weights + (2 * diagonals + k) * width + i, ev * inv, mask=i < width)
        tl.debug_barrier()
    q_end = tl.load(ring + ((nb + mb) % 3) * width + nb)
    tl.store(out_ptr + b, -gamma * q_end)


def _backward_kernel(w_ptr, n_ptr, m_ptr, ring_ptr, grad_ptr, scale_ptr, stride_b, stride_r, stride_c,
                     width, diagonals, BLOCK: tl.constexpr, CHUNKS: tl.constexpr):
    b = tl.program_id(0)
    nb = tl.load(n_ptr + b).to(tl.int32)
    mb = tl.load(m_ptr + b).to(tl.int32)
    end = nb + mb
    scale = tl.load(scale_ptr + b)
    lanes = tl.arange(0, BLOCK)
    ring = ring_ptr + b * 3 * width  # E on diagonals k % 3
    weights = w_ptr + b * 3 * diagonals * width
    grad = grad_ptr + b * stride_b
    for c in range(CHUNKS):
        i = c * BLOCK + lanes
        for s in range(3):
            tl.store(ring + s * width + i, tl.full([BLOCK], 0.0, ring_ptr.dtype.element_ty), mask=i < width)
    tl.debug_barrier()
    for step in range(0, end - 1):
        k = end - step
        lo = tl.maximum(k - mb, 1)
        hi = tl.minimum(nb, k - 1)
        cur = ring + (k % 3) * width
        next1 = ring + ((k + 1) % 3) * width
        next2 = ring + ((k + 2) % 3) * width
        for c in range(CHUNKS):
            i = c * BLOCK + lanes
            inside = (i >= lo) & (i <= hi)
            on1 = inside & (k + 1 <= end)  # diagonals past the item's end were never written for it
            on2 = inside & (k + 2 <= end)
            # successors of (i, j): (i+1, j) via its "up" weight and (i, j+1) via "left" on k+1,
            # (i+1, j+1) via "diagonal" on k+2 (E and the weights are zero outside their bands)
            e = tl.load(next1 + i + 1, mask=on1, other=0.0) * tl.load(
                weights + (diagonals + k + 1) * width + i + 1, mask=on1, other=0.0)
            e += tl.load(next1 + i, mask=on1, other=0.0) * tl.load(
                weights + (2 * diagonals + k + 1) * width + i, mask=on1, other=0.0)
            e += tl.load(next2 + i + 1, mask=on2, other=0.0) * tl.load(
                weights + (k + 2) * width + i + 1, mask=on2, other=0.0)
            e = tl.where(inside & (k == end), 1.0, e)  # E[n_b, m_b] = 1
            e = tl.where(inside, e, 0.0)
            tl.store(cur + i, e, mask=i < width)
            tl.store(grad + (i - 1) * stride_r + (k - i - 1) * stride_c, e * scale, mask=inside)
        tl.debug_barrier()


@functools.cache
def _kernels(interpret: bool):
    """The jitted kernels; built on first use, so that ``TRITON_INTERPRET`` is read then (the flag keys the cache)."""
    del interpret  # triton.jit reads the environment itself
    return triton.jit(_forward_kernel), triton.jit(_backward_kernel)


def _launch_shape(width: int) -> tuple[int, int, dict]:
    """``BLOCK``, ``CHUNKS`` and the launch options for diagonals of ``width`` cells."""
    block = min(triton.next_power_of_2(width), _MAX_BLOCK)
    return block, triton.cdiv(width, block), {"num_warps": max(1, min(8, block // 128)), "num_stages": 1}


@functools.lru_cache(maxsize=32)
def _gamma_params(gamma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``(gamma, 1 / gamma)`` on the device, made once per value: a host-to-device copy waits for the GPU."""
    return torch.tensor([gamma, 1.0 / gamma], dtype=dtype).to(device)


class TritonSoftDTW(torch.autograd.Function):
    """``TritonSoftDTW.apply(cost [B, N, M], n [B], m [B], gamma) -> [B]`` on CUDA tensors.

    Same contract as :class:`sb_mal.losses.soft_dtw.SoftDTWFunction` (float32 or float64 ``cost``,
    long lengths ``1 <= n_b <= N``; cells beyond them get zero gradient, their values are never read).

    Example (on CPU tensors, interpreted)
    -------------------------------------
    >>> import os
    >>> os.environ["TRITON_INTERPRET"] = "1"
    >>> cost = torch.tensor([[[0.0, 5.0], [5.0, 0.0]], [[1.0, 0.0], [9.0, 9.0]]], requires_grad=True)
    >>> value = TritonSoftDTW.apply(cost, torch.tensor([2, 1]), torch.tensor([2, 2]), 0.01)
    >>> value.sum().backward()
    >>> del os.environ["TRITON_INTERPRET"]
    >>> (value.round(decimals=3) + 0.0).tolist(), cost.grad.round().tolist()
    ([0.0, 1.0], [[[1.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [0.0, 0.0]]])
    """

    @staticmethod
    def forward(ctx, cost: torch.Tensor, n: torch.Tensor, m: torch.Tensor, gamma: float):
        interpret = interpreting()
        if cost.device.type != "cuda" and not interpret:
            raise ValueError(f"the Triton soft-DTW kernel runs on CUDA tensors (or under TRITON_INTERPRET=1), "
                             f"got one on {cost.device}")
        transpose = cost.shape[2] < cost.shape[1]  # the shorter side along the diagonals
        if transpose:
            cost, n, m = cost.transpose(1, 2), m, n
        batch, rows, cols = cost.shape
        width, diagonals = rows + 2, rows + cols + 1
        n, m = n.to(cost.device).contiguous(), m.to(cost.device).contiguous()
        ring = cost.new_empty(batch, 3, width)
        weights = cost.new_empty(batch, 3, diagonals, width)
        out = cost.new_empty(batch)
        block, chunks, options = _launch_shape(width)
        forward_kernel, _ = _kernels(interpret)
        extra = {} if interpret else options
        params = _gamma_params(float(gamma), cost.dtype, cost.device)
        forward_kernel[(batch,)](cost, n, m, params, ring, weights, out, cost.stride(0), cost.stride(1),
                                 cost.stride(2), width, diagonals, BLOCK=block, CHUNKS=chunks, **extra)
        ctx.save_for_backward(weights, n, m)
        ctx.meta = (transpose, rows, cols)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: torch.Tensor):
        weights, n, m = ctx.saved_tensors
        transpose, rows, cols = ctx.meta
        batch, _, diagonals, width = weights.shape
        grad = weights.new_zeros(batch, rows, cols)
        ring = weights.new_empty(batch, 3, width)
        scale = grad_output.to(weights.dtype).contiguous()
        block, chunks, options = _launch_shape(width)
        interpret = interpreting()
        _, backward_kernel = _kernels(interpret)
        extra = {} if interpret else options
        backward_kernel[(batch,)](weights, n, m, ring, grad, scale, grad.stride(0), grad.stride(1), grad.stride(2),
                                  width, diagonals, BLOCK=block, CHUNKS=chunks, **extra)
        return (grad.transpose(1, 2) if transpose else grad), None, None, None
