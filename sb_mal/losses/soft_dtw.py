"""Batched soft-DTW (Cuturi & Blondel, 2017) and the soft-DTW divergence: torch, with numba and Triton kernels.

Soft-DTW between sequences ``x_1..x_n`` and ``y_1..y_m`` of feature vectors is the last cell
``R[n, m]`` of the recursion

    R[0, 0] = 0,   R[i, 0] = R[0, j] = +inf   (i, j > 0),
    R[i, j] = C[i, j] + softmin_gamma(R[i-1, j-1], R[i-1, j], R[i, j-1]),
    softmin_gamma(a) = -gamma * log(sum_k exp(-a_k / gamma)),

with ``C[i, j]`` the cost of pairing ``x_i`` with ``y_j``. As ``gamma -> 0`` it tends to the DTW
cost ``min`` over alignment paths; it is smooth for ``gamma > 0``. Its gradient with respect to
``C`` is the expected alignment matrix ``E`` (the soft alignment's probability of visiting each
cell), which Cuturi & Blondel obtain by a backward recursion from ``(n, m)``.

The soft-DTW *divergence* ``sdtw(x, y) - (sdtw(x, x) + sdtw(y, y)) / 2`` (Blondel, Mensch & Vert,
2021) is zero when ``x == y`` and non-negative for both costs offered here (``exp(-C / gamma)`` is
a positive-definite kernel for the squared Euclidean cost and for ``1 - cosine similarity``).

Implementation (the torch path; the kernels below follow the same arithmetic)
-----------------------------------------------------------------------------
- The pairwise cost matrix ``[B, N, M]`` is computed batched (``|x|^2 + |y|^2 - 2 x.y`` with one
  ``bmm``, or ``1 - cos``); autograd takes its gradient back to ``x`` and ``y``.
- The recursion runs over anti-diagonals (all cells with ``i + j = k`` at once, vectorised over
  the batch and the diagonal): ``N + M - 1`` steps of a few tensor ops each, on any device. It
  runs on ``Q = -R / gamma``, where the soft-min is a logsumexp that subtracts the maximum before
  ``exp`` (``+inf`` boundaries of ``R`` are ``-inf`` in ``Q``), so it is stable for any
  ``gamma > 0`` (tested 0.01 to 10). Differences below -60 are clamped there (weights under
  ``1e-26`` of the largest, invisible in the sum; it keeps ``exp`` off its slow underflow path).
- :class:`SoftDTWFunction` is a ``torch.autograd.Function``. Its forward keeps only three
  diagonals of ``R`` and saves, for every cell, the soft-min weights of its three predecessors
  (``P``; these are exactly the factors ``a, b, c`` of Cuturi & Blondel's Algorithm 2, computed
  in the forward without the cancellation ``R[i+1, j] - C[i+1, j] - R[i, j]`` suffers in
  float32). Its backward runs Cuturi & Blondel's recursion
  ``E[i, j] = sum over successors s of E[s] * P[s -> (i, j)]`` over anti-diagonals, started with
  ``E[n_b, m_b] = 1`` at each item's own end, and returns ``E * grad_output``.
- Per-item lengths: item ``b``'s value is read at ``R[n_b, m_b]``; cells beyond its lengths are
  computed on a zeroed cost but never reach that value, and get exactly zero alignment weight
  (their ``E`` only collects from cells that are also beyond), so padding content does not matter.
- Memory: ``O(B * N * M)``. Anti-diagonals are stored padded, ``K = N + M + 1`` rows of width
  ``W = min(N, M) + 2`` (the shorter side is put on the diagonal axis; about twice the ``N * M``
  cells for ``N = M``): the saved weights take ``3 * K * W * B`` elements, the forward briefly
  holds the skewed cost (``K * W * B``), the backward ``E`` (``K * W * B``) and the ``[B, N, M]``
  gradient. For ``N = M`` the saved weights plus ``E`` are about ``8 * B * N * M`` elements
  (61 MiB for B=8, N=M=500, float32); the measured peak RSS growth of a whole forward + backward,
  cost matrix and its autograd buffers included, is 115 MiB there (benchmarks/bench_soft_dtw.py).
  Double backward is not supported.
- float32 and float64 (half precision costs are computed in float32).

Backends
--------
The recursion (everything after the cost matrix) has three implementations of the same arithmetic,
chosen per call by ``backend``:

- ``"numba"`` (:mod:`sb_mal.losses.soft_dtw_numba`): CPU tensors; one compiled loop nest per
  item, the cells of a diagonal vectorised, items spread over ``torch.get_num_threads()`` threads;
  float64 arithmetic inside; saves ``3 * sum_b n_b * m_b`` weights. Needs numba (optional; it comes
  with librosa).
- ``"triton"`` (:mod:`sb_mal.losses.soft_dtw_triton`): CUDA tensors; one kernel launch for the
  forward and one for the backward, one program per item; saves ``3 * K * W`` weights per item.
  Needs Triton (part of torch's CUDA builds).
- ``"torch"``: the wavefront of tensor ops described above, on any device.
- ``"auto"`` (default): ``"triton"`` for CUDA tensors and ``"numba"`` for CPU tensors when the
  package imports, else ``"torch"``. The environment variable ``SB_MAL_SOFT_DTW_BACKEND`` (one of
  the names above) replaces ``"auto"`` for every call, e.g. to force the torch path in a recipe.

All three agree with the float64 reference to rounding (tests/test_soft_dtw.py runs the Triton
kernels on the CPU under ``TRITON_INTERPRET=1``); forcing a backend that cannot run the input raises.
A kernel picked by ``"auto"`` that fails (it cannot compile on this machine, say) is named once in
the log and replaced by the torch path for the rest of the process.

Example
-------
>>> x = torch.tensor([[[0.0], [1.0], [2.0]]])
>>> y = torch.tensor([[[0.0], [2.0]]])
>>> round(float(soft_dtw(x, y, gamma=1e-3)), 2)  # DTW: pair 1 with 0 or 2, cost 1
1.0
>>> float(soft_dtw_divergence(x, x))
0.0
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
from collections.abc import Sequence

import torch
from torch.autograd.function import once_differentiable

__all__ = ["BACKENDS", "DISTANCES", "SoftDTWFunction", "pairwise_cost", "resolve_backend", "soft_dtw",
           "soft_dtw_divergence", "soft_dtw_from_cost"]

logger = logging.getLogger(__name__)

DISTANCES = ("sqeuclidean", "cosine")
BACKENDS = ("auto", "torch", "numba", "triton")
BACKEND_ENV = "SB_MAL_SOFT_DTW_BACKEND"


def pairwise_cost(x: torch.Tensor, y: torch.Tensor, distance: str = "sqeuclidean", eps: float = 1e-8) -> torch.Tensor:
    """Batched cost matrix ``[B, N, M]`` between ``x [B, N, D]`` and ``y [B, M, D]``.

    ``"sqeuclidean"``: ``|x_i - y_j|^2`` (via ``|x|^2 + |y|^2 - 2 x.y``, clamped at 0);
    ``"cosine"``: ``1 - cos(x_i, y_j)`` (zero vectors have cosine 0).

    Example
    -------
    >>> x, y = torch.tensor([[[1.0, 0.0]]]), torch.tensor([[[0.0, 2.0], [2.0, 0.0]]])
    >>> pairwise_cost(x, y).tolist(), pairwise_cost(x, y, "cosine").tolist()
    ([[[5.0, 1.0]]], [[[1.0, 0.0]]])
    """
    if distance == "sqeuclidean":
        sq = x.pow(2).sum(-1)[:, :, None] + y.pow(2).sum(-1)[:, None, :]
        return torch.baddbmm(sq, x, y.transpose(1, 2), alpha=-2.0).clamp_min(0.0)
    if distance == "cosine":
        xn = x / x.norm(dim=-1, keepdim=True).clamp_min(eps)
        yn = y / y.norm(dim=-1, keepdim=True).clamp_min(eps)
        return 1.0 - torch.bmm(xn, yn.transpose(1, 2))
    raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")


# -- anti-diagonal layout ------------------------------------------------------------------------------
# Cell (i, j) (1-based, 1 <= i <= N, 1 <= j <= M) lives at [k = i + j, i] of a [K, W, B] tensor with
# K = N + M + 1 and W = N + 2 (i = 0 and i = N + 1 stay as padding); the batch is innermost.

def _skew_index(n: int, m: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices: cells [N*M] (+1 zero slot) -> skewed [K*W], and skewed -> cells."""
    k = torch.arange(n + m + 1, device=device)[:, None]
    i = torch.arange(n + 2, device=device)[None, :]
    j = k - i
    valid = (i >= 1) & (i <= n) & (j >= 1) & (j <= m)
    to_skew = torch.where(valid, (i - 1) * m + (j - 1), n * m).flatten()
    ii = torch.arange(1, n + 1, device=device)[:, None]
    jj = torch.arange(1, m + 1, device=device)[None, :]
    from_skew = ((ii + jj) * (n + 2) + ii).flatten()
    return to_skew, from_skew


def _lengths(x_lengths, y_lengths, rows: int, cols: int, batch: int, device) -> tuple[torch.Tensor, torch.Tensor,
                                                                                    int, int]:
    """Validated long lengths ``n``, ``m`` on ``device`` and their maxima, with one host sync at most (none when
    both are ``None``: full lengths)."""
    tensors, given = [], []
    for lengths, total, name in ((x_lengths, rows, "x_lengths"), (y_lengths, cols, "y_lengths")):
        if lengths is None:
            tensors.append(torch.full((batch,), total, dtype=torch.long, device=device))
            continue
        lengths = torch.as_tensor(lengths)
        if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
            raise TypeError(f"{name} must be integer frame counts, got dtype {lengths.dtype} (convert relative "
                            "lengths first, e.g. torch.round(rel * frames).long())")
        if lengths.shape != (batch,):
            raise ValueError(f"{name} must have shape [{batch}], got {tuple(lengths.shape)}")
        given.append((len(tensors), total, name))
        tensors.append(lengths.to(device=device, dtype=torch.long))
    maxima = [rows, cols]
    if given:
        bounds = torch.stack([f(tensors[i]) for i, _, _ in given for f in (torch.amin, torch.amax)]).tolist()
        for (i, total, name), low, high in zip(given, bounds[0::2], bounds[1::2]):
            if low < 1 or high > total:
                raise ValueError(f"{name} must lie in 1..{total} (the padded length), got values in {low}..{high}")
            maxima[i] = high
    return tensors[0], tensors[1], maxima[0], maxima[1]


class SoftDTWFunction(torch.autograd.Function):
    """``SoftDTWFunction.apply(cost [B, N, M], n [B], m [B], gamma) -> [B]``: ``R[b, n_b, m_b]``.

    ``n``/``m`` are long tensors of valid lengths (``1 <= n_b <= N``); cells beyond them may hold
    any values (they are zeroed here and get zero gradient). The gradient wrt ``cost`` is
    ``E * grad_output``. Internally everything is laid out ``[diagonal, i, batch]``.
    """

    @staticmethod
    def forward(ctx, cost: torch.Tensor, n: torch.Tensor, m: torch.Tensor, gamma: float):
        transpose = cost.shape[2] < cost.shape[1]  # put the shorter side on the diagonal axis
        if transpose:
            cost, n, m = cost.transpose(1, 2), m, n
        batch, rows, cols = cost.shape
        width, diags, device = rows + 2, rows + cols + 1, cost.device
        # -C / gamma as rows of [N*M + 1, B] (the last row: zeros for the skewed layout's padding)
        flat = cost.new_zeros(rows * cols + 1, batch)
        grid = flat[:-1].view(rows, cols, batch)
        grid.copy_(cost.permute(1, 2, 0))
        inside = ((torch.arange(rows, device=device)[:, None, None] < n[None, None, :])
                  & (torch.arange(cols, device=device)[None, :, None] < m[None, None, :]))
        grid.masked_fill_(~inside, 0.0).mul_(-1.0 / gamma)
        del inside, grid
        skewed = flat.index_select(0, _skew_index(rows, cols, device)[0]).view(diags, width, batch)
        del flat
        ends, groups = _end_groups(n, m)
        last = max(ends)
        weights = cost.new_zeros(last + 3, 3, width, batch)
        # the recursion runs on Q = -R / gamma (fewer ops per step): Q = -C / gamma + logsumexp(Q of predecessors)
        ring = cost.new_full((3, width, batch), -math.inf)
        ring[0, 0] = 0.0
        out = cost.new_empty(batch)
        for k in range(2, last + 1):
            lo, hi = max(1, k - cols), min(rows, k - 1)
            cur, prev, prev2 = ring[k % 3], ring[(k - 1) % 3], ring[(k - 2) % 3]
            # predecessors of (i, k - i): diagonal (i-1, j-1), up (i-1, j), left (i, j-1)
            pred = torch.stack((prev2[lo - 1:hi], prev[lo - 1:hi], prev[lo:hi + 1]))
            top = pred.amax(0)
            # clamped at -60: weights below exp(-60) ~ 1e-26 of the largest (which is 1) stay out of exp's
            # slow underflow path; they change nothing visible (the +inf boundaries get ~1e-26, never read)
            z = pred.sub_(top).clamp_(min=-60.0).exp_()
            total = z.sum(0)
            torch.div(z, total, out=weights[k, :, lo:hi + 1])  # soft-min weights of the predecessors
            cur.fill_(-math.inf)
            torch.add(skewed[k, lo:hi + 1], total.log_().add_(top), out=cur[lo:hi + 1])
            if k in groups:
                items, at = groups[k]
                out[items] = cur[at, items] * -gamma
        ctx.save_for_backward(weights)
        ctx.meta = (transpose, rows, cols, groups, last)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: torch.Tensor):
        (weights,) = ctx.saved_tensors
        transpose, rows, cols, groups, last = ctx.meta
        width, batch = rows + 2, weights.shape[3]
        align = weights.new_zeros(rows + cols + 3, width, batch)
        for k in range(last, 1, -1):
            lo, hi = max(1, k - cols), min(rows, k - 1)
            # successors of (i, j): (i+1, j) via its "up" weight, (i, j+1) via "left", (i+1, j+1) via "diagonal"
            cell = align[k, lo:hi + 1]
            torch.mul(align[k + 1, lo + 1:hi + 2], weights[k + 1, 1, lo + 1:hi + 2], out=cell)
            cell.addcmul_(align[k + 1, lo:hi + 1], weights[k + 1, 2, lo:hi + 1])
            cell.addcmul_(align[k + 2, lo + 1:hi + 2], weights[k + 2, 0, lo + 1:hi + 2])
            if k in groups:
                items, at = groups[k]
                align[k, at, items] = 1.0
        flat = align[: rows + cols + 1].view(-1, batch)
        grad = flat.index_select(0, _skew_index(rows, cols, align.device)[1])  # [N*M, B]
        grad = grad.mul_(grad_output.to(grad.dtype)).view(rows, cols, batch).permute(2, 0, 1)
        if transpose:
            grad = grad.transpose(1, 2)
        return grad, None, None, None


def _end_groups(n: torch.Tensor, m: torch.Tensor) -> tuple[list[int], dict[int, tuple[torch.Tensor, torch.Tensor]]]:
    """Each item's end diagonal ``n_b + m_b`` and, per diagonal, (items ending there, their column)."""
    ends = (n + m).tolist()
    groups: dict[int, list[int]] = {}
    for b, k in enumerate(ends):
        groups.setdefault(k, []).append(b)
    device = n.device
    return ends, {k: (torch.tensor(items, device=device), n[torch.tensor(items, device=device)])
                  for k, items in groups.items()}


def _check_gamma(gamma: float) -> float:
    gamma = float(gamma)
    if not gamma > 0 or not math.isfinite(gamma):
        raise ValueError(f"gamma must be a positive finite number, got {gamma}")
    return gamma


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def resolve_backend(backend: str | None, device: torch.device | str) -> str:
    """The backend that runs the recursion for tensors on ``device`` (see "Backends" above).

    ``None`` or ``"auto"`` read ``$SB_MAL_SOFT_DTW_BACKEND`` first. A forced backend that cannot run
    there raises (ImportError for a missing package, ValueError for the wrong device).

    Example
    -------
    >>> resolve_backend("torch", "cpu")
    'torch'
    >>> resolve_backend("auto", "cpu") in ("numba", "torch")
    True
    """
    requested = backend
    if backend in (None, "auto"):
        backend = os.environ.get(BACKEND_ENV) or "auto"
        requested = f"{backend} (from ${BACKEND_ENV})" if backend != "auto" else backend
    if backend not in BACKENDS:
        raise ValueError(f"soft-DTW backend must be one of {BACKENDS}, got {requested!r}")
    kind = torch.device(device).type
    if backend == "auto":
        if kind == "cuda" and _importable("triton"):
            return "triton"
        if kind == "cpu" and _importable("numba"):
            return "numba"
        return "torch"
    if backend == "numba":
        if not _importable("numba"):
            raise ImportError("soft-DTW backend 'numba' needs numba (pip install numba)")
        if kind != "cpu":
            raise ValueError(f"soft-DTW backend 'numba' runs on CPU tensors, got {kind} tensors")
    if backend == "triton":
        if not _importable("triton"):
            raise ImportError("soft-DTW backend 'triton' needs Triton (pip install triton; torch's CUDA builds "
                              "include it)")
        from sb_mal.losses.soft_dtw_triton import interpreting

        if kind != "cuda" and not (kind == "cpu" and interpreting()):
            raise ValueError(f"soft-DTW backend 'triton' runs on CUDA tensors (CPU tensors only under "
                             f"TRITON_INTERPRET=1), got {kind} tensors")
    return backend


_FAILED: dict[str, str] = {}  # kernel backends whose first use failed in this process -> why (auto skips them)


def _recursion(cost: torch.Tensor, n: torch.Tensor, m: torch.Tensor, gamma: float, backend: str | None):
    """``R[b, n_b, m_b]`` of ``cost`` with the backend chosen by :func:`resolve_backend`.

    A kernel backend chosen by ``"auto"`` that fails (e.g. a Triton or numba build that cannot compile
    here) is reported once in the log and replaced by the torch path for the rest of the process; a
    forced backend raises. Out-of-memory errors always propagate.
    """
    chosen = resolve_backend(backend, cost.device)
    automatic = chosen != backend
    if automatic and chosen in _FAILED:
        chosen = "torch"
    try:
        if chosen == "numba":
            from sb_mal.losses.soft_dtw_numba import NumbaSoftDTW

            return NumbaSoftDTW.apply(cost, n, m, gamma)
        if chosen == "triton":
            from sb_mal.losses.soft_dtw_triton import TritonSoftDTW

            return TritonSoftDTW.apply(cost, n, m, gamma)
    except (torch.cuda.OutOfMemoryError, MemoryError):
        raise
    except Exception as exc:
        if not automatic:
            raise
        _FAILED[chosen] = f"{type(exc).__name__}: {exc}"
        logger.warning("soft-DTW: the %s kernel failed (%s); using the torch wavefront from now on (set %s=torch "
                       "to skip the kernel)", chosen, _FAILED[chosen], BACKEND_ENV)
    return SoftDTWFunction.apply(cost, n, m, gamma)


def soft_dtw_from_cost(cost: torch.Tensor, x_lengths=None, y_lengths=None, gamma: float = 0.1,
                       backend: str | None = "auto") -> torch.Tensor:
    """Soft-DTW ``[B]`` of a precomputed cost matrix ``[B, N, M]`` (row lengths, column lengths).

    Example
    -------
    >>> cost = torch.tensor([[[0.0, 5.0], [5.0, 0.0]]], requires_grad=True)
    >>> value = soft_dtw_from_cost(cost, gamma=0.01)
    >>> value.backward()
    >>> cost.grad.round().tolist()  # the expected alignment: the diagonal path
    [[[1.0, 0.0], [0.0, 1.0]]]
    """
    if cost.dim() != 3:
        raise ValueError(f"cost must be [batch, N, M], got shape {tuple(cost.shape)}")
    batch, rows, cols = cost.shape
    if rows == 0 or cols == 0:
        raise ValueError(f"cost must have at least one row and column, got shape {tuple(cost.shape)}")
    gamma = _check_gamma(gamma)
    n, m, _, _ = _lengths(x_lengths, y_lengths, rows, cols, batch, cost.device)
    if cost.dtype not in (torch.float32, torch.float64):
        cost = cost.float()
    return _recursion(cost, n, m, gamma, backend)


def _prepare(x, y, x_lengths, y_lengths):
    for name, t in (("x", x), ("y", y)):
        if t.dim() != 3:
            raise ValueError(f"{name} must be [batch, frames, features], got shape {tuple(t.shape)}")
    if x.shape[0] != y.shape[0] or x.shape[2] != y.shape[2]:
        raise ValueError(f"x {tuple(x.shape)} and y {tuple(y.shape)} must agree in batch and feature size")
    if x.shape[1] == 0 or y.shape[1] == 0:
        raise ValueError(f"x and y need at least one frame, got shapes {tuple(x.shape)} and {tuple(y.shape)}")
    n, m, n_max, m_max = _lengths(x_lengths, y_lengths, x.shape[1], y.shape[1], x.shape[0], x.device)
    if x.dtype not in (torch.float32, torch.float64):
        x, y = x.float(), y.float()
    # trim to the longest valid item and zero the padding (so NaN/inf there cannot leak in)
    if x_lengths is not None:
        x = x[:, :n_max]
        x = x.masked_fill(~(torch.arange(x.shape[1], device=x.device)[None, :, None] < n[:, None, None]), 0.0)
    if y_lengths is not None:
        y = y[:, :m_max]
        y = y.masked_fill(~(torch.arange(y.shape[1], device=y.device)[None, :, None] < m[:, None, None]), 0.0)
    return x, y, n, m


def soft_dtw(x: torch.Tensor, y: torch.Tensor, x_lengths: torch.Tensor | Sequence[int] | None = None,
             y_lengths: torch.Tensor | Sequence[int] | None = None, gamma: float = 0.1,
             distance: str = "sqeuclidean", backend: str | None = "auto") -> torch.Tensor:
    """Soft-DTW ``[B]`` between ``x [B, N, D]`` and ``y [B, M, D]`` (see the module docstring).

    Arguments
    ---------
    x, y : torch.Tensor
        Sequences of feature vectors, padded to ``N`` and ``M`` frames.
    x_lengths, y_lengths : tensor or sequence of int, optional
        Valid frames per item (``1..N``, ``1..M``; default: all). Padding content is ignored.
    gamma : float
        Smoothing (> 0), in units of the cost.
    distance : str
        ``"sqeuclidean"`` or ``"cosine"`` (``1 - cos``).
    backend : str, optional
        ``"auto"`` (default), ``"torch"``, ``"numba"`` or ``"triton"``: which implementation runs the
        recursion (see "Backends" in the module docstring).

    Example
    -------
    >>> x = torch.randn(2, 5, 3, requires_grad=True)
    >>> value = soft_dtw(x, torch.randn(2, 4, 3), x_lengths=[5, 3])
    >>> value.shape, value.sum().backward(), bool(x.grad[1, 3:].abs().sum() == 0)
    (torch.Size([2]), None, True)
    """
    x, y, n, m = _prepare(x, y, x_lengths, y_lengths)
    return _recursion(pairwise_cost(x, y, distance), n, m, _check_gamma(gamma), backend)


def soft_dtw_divergence(x: torch.Tensor, y: torch.Tensor, x_lengths: torch.Tensor | Sequence[int] | None = None,
                        y_lengths: torch.Tensor | Sequence[int] | None = None, gamma: float = 0.1,
                        distance: str = "sqeuclidean", backend: str | None = "auto") -> torch.Tensor:
    """Soft-DTW divergence ``sdtw(x, y) - (sdtw(x, x) + sdtw(y, y)) / 2``, ``[B]``.

    Arguments as :func:`soft_dtw`. The three terms run as one batch of ``3B`` items (``x`` and
    ``y`` padded to the longer of the two).

    Example
    -------
    >>> x = torch.randn(3, 6, 4)
    >>> float(soft_dtw_divergence(x, x).abs().max()) < 1e-5
    True
    >>> bool((soft_dtw_divergence(x, torch.randn(3, 4, 4)) > 0).all())
    True
    """
    x, y, n, m = _prepare(x, y, x_lengths, y_lengths)
    batch, frames = x.shape[0], max(x.shape[1], y.shape[1])
    x = torch.nn.functional.pad(x, (0, 0, 0, frames - x.shape[1]))
    y = torch.nn.functional.pad(y, (0, 0, 0, frames - y.shape[1]))
    left, right = torch.cat((x, x, y)), torch.cat((y, x, y))
    values = _recursion(pairwise_cost(left, right, distance), torch.cat((n, n, m)), torch.cat((m, n, m)),
                        _check_gamma(gamma), backend)
    return values[:batch] - 0.5 * (values[batch:2 * batch] + values[2 * batch:])
