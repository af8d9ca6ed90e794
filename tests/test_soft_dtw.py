"""Batched soft-DTW against a naive double-loop reference, and the ssl_softdtw loss.

``soft_dtw_naive`` (below) is the independent reference: one pair at a time, a plain O(N*M)
python double loop over torch scalars in float64 (so autograd through it gives reference
gradients), its own per-pair cost. benchmarks/bench_soft_dtw.py times it too.
"""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest
import torch

from sb_mal.losses.soft_dtw import pairwise_cost, resolve_backend, soft_dtw, soft_dtw_divergence, soft_dtw_from_cost

soft_dtw_module = importlib.import_module("sb_mal.losses.soft_dtw")  # the package exports a function of that name
GAMMAS = (0.01, 0.1, 10.0)
DISTANCES = ("sqeuclidean", "cosine")


def _pair_cost(a: torch.Tensor, b: torch.Tensor, distance: str) -> torch.Tensor:
    if distance == "sqeuclidean":
        return ((a - b) ** 2).sum()
    return 1 - (a * b).sum() / (a.norm() * b.norm())


def soft_dtw_naive(x: torch.Tensor, y: torch.Tensor, gamma: float = 0.1, distance: str = "sqeuclidean") -> torch.Tensor:
    """Soft-DTW of one pair ``x [N, D]``, ``y [M, D]`` by the textbook double loop (float64)."""
    x, y = x.double(), y.double()
    rows, cols = x.shape[0], y.shape[0]
    inf = x.new_tensor(math.inf)
    r = [[inf] * (cols + 1) for _ in range(rows + 1)]
    r[0][0] = x.new_tensor(0.0)
    for i in range(1, rows + 1):
        for j in range(1, cols + 1):
            prev = torch.stack((r[i - 1][j - 1], r[i - 1][j], r[i][j - 1]))
            r[i][j] = _pair_cost(x[i - 1], y[j - 1], distance) - gamma * torch.logsumexp(-prev / gamma, 0)
    return r[rows][cols]


def dtw_plain(cost: np.ndarray) -> tuple[float, np.ndarray]:
    """Hard DTW (min recursion) of one cost matrix, and its optimal path as a 0/1 matrix."""
    rows, cols = cost.shape
    r = np.full((rows + 1, cols + 1), np.inf)
    r[0, 0] = 0.0
    for i in range(1, rows + 1):
        for j in range(1, cols + 1):
            r[i, j] = cost[i - 1, j - 1] + min(r[i - 1, j - 1], r[i - 1, j], r[i, j - 1])
    path, i, j = np.zeros_like(cost), rows, cols
    while (i, j) != (0, 0):
        path[i - 1, j - 1] = 1
        i, j = min(((i - 1, j - 1), (i - 1, j), (i, j - 1)), key=lambda c: r[c])
    return float(r[rows, cols]), path


def _batch(rows=7, cols=5, dim=4, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, rows, dim, generator=g, dtype=dtype)
    y = torch.randn(4, cols, dim, generator=g, dtype=dtype)
    xl = [rows, max(1, rows // 2), rows - 1, 1]  # different lengths per item, one of a single frame
    yl = [cols, cols, max(1, cols // 2), cols - 1]
    return x, y, xl, yl


def _naive_batch(x, y, xl, yl, gamma, distance):
    return torch.stack([soft_dtw_naive(x[b, :xl[b]], y[b, :yl[b]], gamma, distance) for b in range(len(xl))])


# -- exactness against the naive reference -----------------------------------------------------------
@pytest.mark.parametrize("shape", [(7, 5), (4, 9)], ids=["N>M", "N<M"])
@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("gamma", GAMMAS)
def test_values_and_gradients_match_naive_reference(shape, distance, gamma):
    x, y, xl, yl = _batch(*shape)
    weights = torch.tensor([1.0, -0.5, 2.0, 0.3], dtype=torch.float64)  # a different grad_output per item
    grads = []
    for fn in (lambda a, b: soft_dtw(a, b, xl, yl, gamma=gamma, distance=distance),
               lambda a, b: _naive_batch(a, b, xl, yl, gamma, distance)):
        a, b = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
        value = fn(a, b)
        (value * weights).sum().backward()
        grads.append((value.detach(), a.grad, b.grad))
    (ours, gx, gy), (ref, rx, ry) = grads
    assert torch.allclose(ours, ref, rtol=0, atol=1e-5), (ours, ref)
    assert torch.allclose(gx, rx, rtol=0, atol=1e-4) and torch.allclose(gy, ry, rtol=0, atol=1e-4)
    assert gx.abs().sum() > 0 and gy.abs().sum() > 0


@pytest.mark.parametrize("gamma", GAMMAS)
def test_float32_is_close_to_the_float64_reference(gamma):
    x, y, xl, yl = _batch(9, 8, seed=1, dtype=torch.float32)
    x.requires_grad_(True)
    value = soft_dtw(x, y, xl, yl, gamma=gamma)
    value.sum().backward()
    xd = x.detach().double().requires_grad_(True)
    ref = _naive_batch(xd, y.double(), xl, yl, gamma, "sqeuclidean")
    ref.sum().backward()
    assert value.dtype == torch.float32 and x.grad.dtype == torch.float32
    assert torch.allclose(value.double(), ref, rtol=1e-5, atol=1e-4)
    assert torch.allclose(x.grad.double(), xd.grad, rtol=1e-4, atol=1e-4)


def test_gradcheck_tiny_case():
    g = torch.Generator().manual_seed(2)
    for distance in DISTANCES:
        x = torch.randn(2, 4, 3, generator=g, dtype=torch.float64, requires_grad=True)
        y = torch.randn(2, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda a, b: soft_dtw(a, b, [4, 2], [3, 2], gamma=0.5, distance=distance),
                                        (x, y))
    cost = torch.rand(2, 3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda c: soft_dtw_from_cost(c, [3, 2], [4, 5], gamma=0.2), (cost,))


# -- limits and properties ---------------------------------------------------------------------------------
def test_small_gamma_approaches_dtw_and_its_gradient_the_optimal_path():
    g = torch.Generator().manual_seed(3)
    cost = torch.rand(3, 8, 6, generator=g, dtype=torch.float64)
    for gamma in (1e-2, 1e-3):
        values = soft_dtw_from_cost(cost, gamma=gamma)
        for b in range(3):
            hard, _ = dtw_plain(cost[b].numpy())
            # soft-min <= min, and >= min - gamma * log(number of paths) >= min - gamma * (N + M) * log 3
            assert hard - 14 * gamma * math.log(3) <= float(values[b]) <= hard + 1e-12
    cost.requires_grad_(True)
    soft_dtw_from_cost(cost, gamma=1e-4).sum().backward()
    for b in range(3):
        _, path = dtw_plain(cost[b].detach().numpy())
        assert np.allclose(cost.grad[b].numpy(), path, atol=1e-3)


def test_alignment_weights_start_and_end_at_each_items_corners():
    cost = torch.rand(3, 6, 5, dtype=torch.float64, requires_grad=True)
    soft_dtw_from_cost(cost, [6, 4, 2], [5, 3, 5], gamma=1.0).sum().backward()
    grad = cost.grad
    for b, (n, m) in enumerate([(6, 5), (4, 3), (2, 5)]):
        assert float(grad[b, 0, 0]) == pytest.approx(1.0) and float(grad[b, n - 1, m - 1]) == pytest.approx(1.0)
        assert torch.all(grad[b, n:] == 0) and torch.all(grad[b, :, m:] == 0)  # padded cells: zero weight
        assert torch.all(grad[b, :n, :m] >= 0) and torch.all(grad[b, :n, :m] <= 1 + 1e-9)


def test_padding_content_does_not_matter():
    x, y, xl, yl = _batch(6, 7, seed=4)
    results = []
    for fill in (0.0, 1e6, math.nan):
        a, b = x.clone(), y.clone()
        for i in range(4):
            a[i, xl[i]:] = fill
            b[i, yl[i]:] = fill
        a.requires_grad_(True)
        b.requires_grad_(True)
        value = soft_dtw_divergence(a, b, xl, yl)
        value.sum().backward()
        results.append((value.detach(), a.grad, b.grad))
    for value, ga, gb in results[1:]:
        assert torch.equal(value, results[0][0])
        assert torch.equal(ga, results[0][1]) and torch.equal(gb, results[0][2])
    for i in range(4):
        assert torch.all(results[0][1][i, xl[i]:] == 0) and torch.all(results[0][2][i, yl[i]:] == 0)


@pytest.mark.parametrize("distance", DISTANCES)
def test_divergence_zero_for_identical_nonnegative_otherwise_and_equal_to_its_definition(distance):
    x, y, xl, yl = _batch(8, 6, seed=5)
    same = soft_dtw_divergence(x, x, xl, xl, distance=distance)
    assert same.abs().max() < 1e-10
    for gamma in (0.01, 0.1, 1.0):
        div = soft_dtw_divergence(x, y, xl, yl, gamma=gamma, distance=distance)
        assert torch.all(div > 0)
        parts = [soft_dtw(a, b, la, lb, gamma=gamma, distance=distance)
                 for a, b, la, lb in ((x, y, xl, yl), (x, x, xl, xl), (y, y, yl, yl))]
        assert torch.allclose(div, parts[0] - 0.5 * (parts[1] + parts[2]), atol=1e-10)
    g = torch.Generator().manual_seed(6)
    many = soft_dtw_divergence(torch.randn(64, 5, 3, generator=g, dtype=torch.float64),
                               torch.randn(64, 7, 3, generator=g, dtype=torch.float64), distance=distance)
    assert torch.all(many >= 0)


def test_pairwise_cost_matches_direct_formulas():
    x, y, _, _ = _batch(5, 3, dim=6, seed=7)
    sq = ((x[:, :, None] - y[:, None]) ** 2).sum(-1)
    cos = 1 - torch.nn.functional.cosine_similarity(x[:, :, None], y[:, None], dim=-1)
    assert torch.allclose(pairwise_cost(x, y), sq) and torch.allclose(pairwise_cost(x, y, "cosine"), cos)


def test_stable_for_extreme_gamma_in_float32():
    x = 10 * torch.randn(2, 40, 8, requires_grad=True)  # costs in the hundreds
    y = 10 * torch.randn(2, 30, 8)
    for gamma in (0.01, 10.0):
        value = soft_dtw_divergence(x, y, gamma=gamma)
        (grad,) = torch.autograd.grad(value.sum(), x)
        assert torch.isfinite(value).all() and torch.isfinite(grad).all() and torch.all(value > 0)
    half = soft_dtw(x.detach().bfloat16(), y.bfloat16())  # low-precision input: computed in float32
    assert half.dtype == torch.float32 and torch.isfinite(half).all()


def test_invalid_arguments_are_rejected_with_clear_messages():
    x, y = torch.randn(2, 4, 3), torch.randn(2, 5, 3)
    with pytest.raises(ValueError, match="x_lengths must lie in 1..4"):
        soft_dtw(x, y, x_lengths=[5, 2])
    with pytest.raises(ValueError, match="y_lengths must lie in 1..5"):
        soft_dtw(x, y, y_lengths=[0, 2])
    with pytest.raises(TypeError, match="integer frame counts"):
        soft_dtw(x, y, x_lengths=torch.tensor([1.0, 0.5]))
    with pytest.raises(ValueError, match=r"x_lengths must have shape \[2\]"):
        soft_dtw(x, y, x_lengths=[4])
    with pytest.raises(ValueError, match="gamma must be a positive"):
        soft_dtw(x, y, gamma=0.0)
    with pytest.raises(ValueError, match="distance must be one of"):
        soft_dtw(x, y, distance="l1")
    with pytest.raises(ValueError, match="must agree in batch and feature size"):
        soft_dtw(x, torch.randn(2, 5, 4))
    with pytest.raises(ValueError, match=r"x must be \[batch, frames, features\]"):
        soft_dtw(x[0], y)


# -- backends: the numba CPU kernel, the Triton kernels (interpreted on the CPU), the torch wavefront ------------
HAVE_NUMBA = soft_dtw_module._importable("numba")
HAVE_TRITON = soft_dtw_module._importable("triton")
BACKEND_PARAMS = [
    "torch",
    pytest.param("numba", marks=pytest.mark.skipif(not HAVE_NUMBA, reason="numba not installed")),
    pytest.param("triton", marks=pytest.mark.skipif(not HAVE_TRITON, reason="triton not installed")),
]
GRAD_FN = {"torch": "SoftDTWFunction", "numba": "NumbaSoftDTW", "triton": "TritonSoftDTW"}


@pytest.fixture
def backend(request, monkeypatch):
    """A backend name; for "triton" on a machine without CUDA the kernels run under Triton's interpreter."""
    name = request.param
    if name == "triton" and not torch.cuda.is_available():
        import triton.language  # noqa: F401  imported uninterpreted first, so later compilations in this process work

        monkeypatch.setenv("TRITON_INTERPRET", "1")
    return name


def _device(backend: str) -> str:
    return "cuda" if backend == "triton" and torch.cuda.is_available() else "cpu"


def _leaf(t: torch.Tensor, device: str) -> torch.Tensor:
    return t.detach().clone().to(device).requires_grad_(True)


@pytest.mark.parametrize("backend", BACKEND_PARAMS, indirect=True)
@pytest.mark.parametrize("shape", [(7, 5), (4, 9)], ids=["N>M", "N<M"])
@pytest.mark.parametrize("distance", DISTANCES)
def test_each_backend_matches_the_naive_reference(backend, shape, distance):
    """Values and gradients of every backend against the float64 double loop (per-item lengths, one of 1 frame)."""
    device = _device(backend)
    x, y, xl, yl = _batch(*shape)
    weights = torch.tensor([1.0, -0.5, 2.0, 0.3], dtype=torch.float64)
    for gamma in (0.01, 1.0):
        ref_x, ref_y = _leaf(x, "cpu"), _leaf(y, "cpu")
        ref = _naive_batch(ref_x, ref_y, xl, yl, gamma, distance)
        (ref * weights).sum().backward()
        a, b = _leaf(x, device), _leaf(y, device)
        value = soft_dtw(a, b, xl, yl, gamma=gamma, distance=distance, backend=backend)
        assert type(value.grad_fn).__name__.startswith(GRAD_FN[backend])  # this backend ran, not a fallback
        (value * weights.to(device)).sum().backward()
        assert torch.allclose(value.detach().cpu(), ref.detach(), rtol=0, atol=1e-10), (value, ref)
        assert torch.allclose(a.grad.cpu(), ref_x.grad, rtol=0, atol=1e-10)
        assert torch.allclose(b.grad.cpu(), ref_y.grad, rtol=0, atol=1e-10)


@pytest.mark.parametrize("backend", BACKEND_PARAMS, indirect=True)
def test_each_backend_in_float32_is_close_to_the_float64_reference(backend):
    device = _device(backend)
    x, y, xl, yl = _batch(9, 8, seed=1, dtype=torch.float32)
    a = _leaf(x, device)
    value = soft_dtw_divergence(a, y.to(device), xl, yl, gamma=0.1, backend=backend)
    value.sum().backward()
    xd = x.double().requires_grad_(True)
    yd = y.double()
    ref = (_naive_batch(xd, yd, xl, yl, 0.1, "sqeuclidean")
           - 0.5 * (_naive_batch(xd, xd, xl, xl, 0.1, "sqeuclidean") + _naive_batch(yd, yd, yl, yl, 0.1, "sqeuclidean")))
    ref.sum().backward()
    assert value.dtype == torch.float32 and a.grad.dtype == torch.float32
    assert torch.allclose(value.double().cpu(), ref, rtol=1e-5, atol=1e-4)
    assert torch.allclose(a.grad.double().cpu(), xd.grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", [p for p in BACKEND_PARAMS if p != "torch"], indirect=True)
def test_kernels_equal_the_torch_path_on_longer_sequences(backend):
    """A bigger case (several kernel chunks in neither kernel, but diagonals of different widths, long
    and short items, N < M and N > M through the transposed cost): equal to the torch wavefront to rounding."""
    device = _device(backend)
    g = torch.Generator().manual_seed(11)
    rows, cols = (40, 55) if backend == "triton" else (130, 170)  # the interpreter is slow
    for shape in ((rows, cols), (cols, rows)):
        cost = (3 * torch.rand(3, *shape, generator=g, dtype=torch.float64)).requires_grad_(True)
        n, m = [shape[0], shape[0] // 3, 1], [shape[1], 2, shape[1] - 5]
        scale = torch.tensor([1.0, 2.0, -1.0], dtype=torch.float64)
        results = []
        for name, c in (("torch", cost), (backend, _leaf(cost, device))):
            value = soft_dtw_from_cost(c, n, m, gamma=0.05, backend=name)
            (value * scale.to(device)).sum().backward()
            results.append((value.detach().cpu(), c.grad.cpu()))
        assert torch.allclose(results[0][0], results[1][0], rtol=1e-12, atol=1e-10)
        assert torch.allclose(results[0][1], results[1][1], rtol=0, atol=1e-12)
        assert torch.all(results[1][1][1, n[1]:] == 0) and torch.all(results[1][1][2, :, m[2]:] == 0)


@pytest.mark.skipif(not HAVE_NUMBA, reason="numba not installed")
def test_numba_kernel_splits_the_batch_over_threads_without_changing_a_bit():
    x, y, xl, yl = _batch(12, 10, seed=12)
    results = []
    threads = torch.get_num_threads()
    try:
        for count in (1, 3):
            torch.set_num_threads(count)
            a = _leaf(x, "cpu")
            value = soft_dtw(a, y, xl, yl, backend="numba")
            value.sum().backward()
            results.append((value.detach(), a.grad))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


@pytest.mark.skipif(not HAVE_NUMBA, reason="numba not installed")
def test_numba_exp_and_log_are_exact_to_float64():
    """The kernel's own exp and log (plain arithmetic, so that LLVM vectorises them) against numpy's."""
    import numba

    from sb_mal.losses import soft_dtw_numba

    @numba.njit
    def apply(values, out, which):
        for t in range(values.shape[0]):
            out[t] = soft_dtw_numba._exp_nonpositive(values[t]) if which == 0 else soft_dtw_numba._log_1_to_3(values[t])

    x = np.concatenate((-np.geomspace(1e-12, 700, 20001), [0.0, -0.5 * math.log(2), -math.log(2)]))
    out = np.empty_like(x)
    apply(x, out, 0)
    assert np.max(np.abs(out / np.exp(x) - 1)) < 4e-16
    apply(np.array([-np.inf, -800.0]), out[:2], 0)
    assert np.all(out[:2] < 1e-300)  # far below every weight that counts beside the largest (1)
    s = np.linspace(1.0, 3.0, 20001)
    apply(s, out[: s.size], 1)
    assert np.max(np.abs(out[: s.size] - np.log(s))) < 4e-16


def test_backend_is_chosen_automatically_and_can_be_forced(monkeypatch):
    monkeypatch.delenv(soft_dtw_module.BACKEND_ENV, raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    cost = torch.rand(2, 5, 4, dtype=torch.float64, requires_grad=True)
    auto = soft_dtw_from_cost(cost)
    assert type(auto.grad_fn).__name__.startswith("NumbaSoftDTW" if HAVE_NUMBA else "SoftDTWFunction")
    assert resolve_backend("auto", "cuda") == ("triton" if HAVE_TRITON else "torch")  # a CUDA tensor's kernel
    assert resolve_backend("auto", "meta") == "torch"
    forced = soft_dtw_from_cost(cost, backend="torch")
    assert type(forced.grad_fn).__name__.startswith("SoftDTWFunction")
    assert torch.allclose(auto, forced, rtol=1e-13)
    monkeypatch.setenv(soft_dtw_module.BACKEND_ENV, "torch")  # the environment replaces "auto" ...
    assert type(soft_dtw_from_cost(cost).grad_fn).__name__.startswith("SoftDTWFunction")
    assert resolve_backend("numba", "cpu") == "numba" or not HAVE_NUMBA  # ... not an explicit choice
    monkeypatch.setenv(soft_dtw_module.BACKEND_ENV, "fast")
    with pytest.raises(ValueError, match=r"backend must be one of .*'fast \(from \$SB_MAL_SOFT_DTW_BACKEND\)'"):
        soft_dtw_from_cost(cost)
    monkeypatch.delenv(soft_dtw_module.BACKEND_ENV)
    with pytest.raises(ValueError, match="backend must be one of"):
        soft_dtw_from_cost(cost, backend="cuda")
    with pytest.raises(ValueError, match="'numba' runs on CPU tensors, got cuda"):
        resolve_backend("numba", "cuda")
    if HAVE_TRITON and not torch.cuda.is_available():
        with pytest.raises(ValueError, match="'triton' runs on CUDA tensors .*TRITON_INTERPRET=1"):
            soft_dtw_from_cost(cost, backend="triton")


def test_without_the_kernel_packages_auto_falls_back_to_torch_and_forcing_says_what_to_install(monkeypatch):
    monkeypatch.delenv(soft_dtw_module.BACKEND_ENV, raising=False)
    monkeypatch.setattr(soft_dtw_module, "_importable", lambda module: False)
    x = torch.randn(2, 6, 3, dtype=torch.float64)
    value = soft_dtw(x, x.flip(1))
    assert type(value.grad_fn).__name__.startswith("SoftDTWFunction") if value.requires_grad else True
    assert resolve_backend("auto", "cpu") == "torch" and resolve_backend("auto", "cuda") == "torch"
    with pytest.raises(ImportError, match=r"pip install numba"):
        soft_dtw(x, x, backend="numba")
    with pytest.raises(ImportError, match=r"pip install triton"):
        resolve_backend("triton", "cuda")


@pytest.mark.skipif(not HAVE_NUMBA, reason="numba not installed")
def test_a_kernel_chosen_automatically_that_fails_is_replaced_by_the_torch_path(monkeypatch, caplog):
    from sb_mal.losses import soft_dtw_numba

    def broken(*args):
        raise RuntimeError("cannot compile here")

    monkeypatch.delenv(soft_dtw_module.BACKEND_ENV, raising=False)
    monkeypatch.setattr(soft_dtw_module, "_FAILED", {})
    monkeypatch.setattr(soft_dtw_numba.NumbaSoftDTW, "apply", broken)
    cost = torch.rand(2, 5, 4, dtype=torch.float64)
    with caplog.at_level("WARNING", logger=soft_dtw_module.__name__):
        value = soft_dtw_from_cost(cost.requires_grad_(True))
    assert type(value.grad_fn).__name__.startswith("SoftDTWFunction")
    assert "numba kernel failed (RuntimeError: cannot compile here)" in caplog.text
    assert torch.allclose(value, soft_dtw_from_cost(cost, backend="torch"))
    with pytest.raises(RuntimeError, match="cannot compile here"):  # forced: the error is the caller's to see
        soft_dtw_from_cost(cost, backend="numba")
    with pytest.raises(torch.cuda.OutOfMemoryError):  # out of memory is never hidden
        monkeypatch.setattr(soft_dtw_module, "_FAILED", {})
        monkeypatch.setattr(soft_dtw_numba.NumbaSoftDTW, "apply",
                            lambda *a: (_ for _ in ()).throw(torch.cuda.OutOfMemoryError("out of memory")))
        soft_dtw_from_cost(cost)


@pytest.mark.skipif(not HAVE_TRITON, reason="triton not installed")
@pytest.mark.parametrize("dtype", ["fp32", "fp64"])
def test_triton_kernels_compile_for_an_h100(dtype):
    """Both kernels go through Triton's whole CUDA pipeline down to a cubin for sm_90, no GPU needed."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    import triton
    from sb_mal.losses import soft_dtw_triton

    ptr = f"*{dtype}"
    ints = dict.fromkeys(("stride_b", "stride_r", "stride_c", "width", "diagonals"), "i32")
    signatures = {
        soft_dtw_triton._forward_kernel: {"cost_ptr": ptr, "n_ptr": "*i64", "m_ptr": "*i64", "gamma_ptr": ptr,
                                          "ring_ptr": ptr, "w_ptr": ptr, "out_ptr": ptr, **ints},
        soft_dtw_triton._backward_kernel: {"w_ptr": ptr, "n_ptr": "*i64", "m_ptr": "*i64", "ring_ptr": ptr,
                                           "grad_ptr": ptr, "scale_ptr": ptr, **ints},
    }
    for width in (502, 1502):  # one chunk per diagonal, and two
        block, chunks, options = soft_dtw_triton._launch_shape(width)
        for fn, signature in signatures.items():
            source = ASTSource(triton.jit(fn), {**signature, "BLOCK": "constexpr", "CHUNKS": "constexpr"},
                               constexprs={"BLOCK": block, "CHUNKS": chunks})
            compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)
            ptx = compiled.asm["ptx"]
            assert compiled.asm["cubin"] and ptx.count("bar.sync") >= 2  # after the set-up and after each diagonal
            assert "cp.async" not in ptx  # no load is prefetched across a barrier


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_triton_kernel_on_cuda_matches_the_cpu_paths(dtype):
    """On a GPU: auto picks the Triton kernel; it agrees with the torch path on the GPU and the CPU's numba
    path, across several chunks of a diagonal (width > 1024) and per-item lengths."""
    g = torch.Generator().manual_seed(13)
    for rows, cols in ((300, 200), (1100, 1300)):
        cost = 2 * torch.rand(3, rows, cols, generator=g, dtype=dtype)
        n, m = [rows, rows // 2, 1], [cols, 3, cols - 7]
        scale = torch.tensor([1.0, -2.0, 0.5], dtype=dtype)
        out = {}
        for name, device in (("auto", "cuda"), ("torch", "cuda"), ("auto", "cpu")):
            c = _leaf(cost, device)
            value = soft_dtw_from_cost(c, n, m, gamma=0.1, backend=name)
            if device == "cuda" and name == "auto":
                assert type(value.grad_fn).__name__.startswith("TritonSoftDTW")
            (value * scale.to(device)).sum().backward()
            out[name, device] = (value.detach().cpu().double(), c.grad.cpu().double())
        tol = dict(rtol=1e-3, atol=1e-3) if dtype == torch.float32 else dict(rtol=1e-11, atol=1e-9)
        for other in (("torch", "cuda"), ("auto", "cpu")):
            assert torch.allclose(out["auto", "cuda"][0], out[other][0], **tol), other
            assert torch.allclose(out["auto", "cuda"][1], out[other][1], rtol=0, atol=tol["atol"]), other


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    x, y, xl, yl = _batch(30, 20, dim=16, seed=8, dtype=torch.float32)
    out = []
    for device in ("cpu", "cuda"):
        a = x.to(device).requires_grad_(True)
        value = soft_dtw_divergence(a, y.to(device), torch.tensor(xl, device=device), yl)
        value.sum().backward()
        assert value.device.type == device
        out.append((value.detach().cpu(), a.grad.cpu()))
    assert torch.allclose(out[0][0], out[1][0], rtol=1e-4, atol=1e-4)
    assert torch.allclose(out[0][1], out[1][1], rtol=1e-3, atol=1e-4)


# -- ssl_softdtw ---------------------------------------------------------------------------------------------
HOP = 320


@pytest.fixture(scope="module")
def ssl_ext(tiny_wavlm_dir):
    """The shared tiny random WavLM (LayerNorm front end), loaded offline."""
    from sb_mal.models.ssl import SSLFeatureExtractor

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield SSLFeatureExtractor(str(tiny_wavlm_dir))


@pytest.fixture(scope="module")
def speech_pair(devset):
    """2 s of a real devset test pair (clean, noisy), [1, 32000] each."""
    from sb_mal.audio import read_audio

    clean, _ = read_audio(devset / "pairs" / "test" / "clean" / "test_000.flac", sample_rate=16000)
    noisy, _ = read_audio(devset / "pairs" / "test" / "noisy" / "test_000.flac", sample_rate=16000)
    return clean[None, :32000].float(), noisy[None, :32000].float()


def _tone(batch=2, samples=8000, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(samples) / 16000
    return 0.3 * torch.sin(2 * torch.pi * (200 + 300 * t) * t) + 0.1 * torch.randn(batch, samples, generator=g)


def test_ssl_softdtw_zero_for_identical_positive_otherwise(ssl_ext):
    from sb_mal.losses.ssl import SSLSoftDTWLoss
    from sb_mal.models.ssl import SSLFeatureExtractor

    loss = SSLSoftDTWLoss(SSLFeatureExtractor(ssl_ext.model, layers=[1, 2]), distance="cosine")
    clean, lengths = _tone(), torch.tensor([1.0, 0.7])
    same = loss(clean, clean, lengths, reduction="batch")
    assert same.shape == (2,) and same.abs().max() < 1e-5
    worse, parts = loss(clean + 0.3 * torch.randn(2, 8000), clean, lengths, reduction="batch", terms=True)
    assert torch.all(worse > 100 * same.abs().max())
    assert sorted(parts) == ["ssl_softdtw_layer1", "ssl_softdtw_layer2"]
    assert loss(clean + 0.3 * torch.randn(2, 8000), clean, reduction="sum").dim() == 0


def test_ssl_softdtw_barely_changes_under_small_shifts_unlike_ssl_mse(ssl_ext, speech_pair):
    """Shift the 'enhanced' signal (here: the clean one) by k = 1..3 SSL frames of leading zeros.

    Scale: each loss's value for the real noisy signal. Measured (tiny random WavLM, test_000, 2 s):
    soft-DTW 0.017 / 0.056 / 0.097 of its noisy value, SSL-MSE 1.31 / 1.35 / 1.31 of its own.
    """
    from sb_mal.losses.ssl import SSLMSELoss, SSLSoftDTWLoss

    clean, noisy = speech_pair
    sdtw, mse = SSLSoftDTWLoss(ssl_ext), SSLMSELoss(ssl_ext)
    sdtw_noisy, mse_noisy = float(sdtw(noisy, clean)), float(mse(noisy, clean))
    assert sdtw_noisy > 0 and mse_noisy > 0
    for k in (1, 2, 3):
        shifted = torch.cat((torch.zeros(1, k * HOP), clean), 1)
        same_length = shifted[:, : clean.shape[1]]
        r_sdtw = float(sdtw(same_length, clean)) / sdtw_noisy
        r_mse = float(mse(same_length, clean)) / mse_noisy
        r_longer = float(sdtw(shifted, clean)) / sdtw_noisy  # not trimmed: k frames longer
        assert r_sdtw < 0.2 and r_longer < 0.2 and r_mse > 1.0, (k, r_sdtw, r_longer, r_mse)
        assert r_sdtw < 0.15 * r_mse


def test_ssl_softdtw_accepts_different_lengths_and_matches_its_definition(ssl_ext):
    from sb_mal.losses.ssl import SSLMSELoss, SSLSoftDTWLoss

    clean = _tone(2, 8000, seed=1)
    enhanced = _tone(2, 9600, seed=2)  # 20 % longer, as after speed perturbation by 0.8
    with pytest.raises(ValueError, match="samples"):
        SSLMSELoss(ssl_ext)(enhanced, clean)  # the frame-aligned losses refuse this pair
    loss = SSLSoftDTWLoss(ssl_ext, gamma=0.1)
    rel_pred, rel_target = torch.tensor([1.0, 0.75]), torch.tensor([1.0, 0.5])
    value = loss(enhanced, clean, rel_pred, reduction="batch", target_length=rel_target)
    for b, (n_pred, n_target) in enumerate([(9600, 8000), (7200, 4000)]):
        est, n = ssl_ext(enhanced[b:b + 1, :n_pred])
        ref, m = ssl_ext(clean[b:b + 1, :n_target])
        scale = est.shape[-1] ** -0.5
        expected = soft_dtw_divergence(est * scale, ref * scale, gamma=0.1) / (n + m)
        assert torch.allclose(value[b], expected[0], rtol=1e-4, atol=1e-6), (b, value, expected)
    # target_length defaults to length (batches padded alike)
    assert torch.allclose(loss(enhanced, clean, rel_pred, reduction="batch"),
                          loss(enhanced, clean, rel_pred, reduction="batch", target_length=rel_pred))


def test_ssl_softdtw_sum_features_equal_d_times_mean_with_scaled_gamma(ssl_ext):
    from sb_mal.losses.ssl import SSLSoftDTWLoss

    clean, enhanced = _tone(2, 8000, seed=3), _tone(2, 7000, seed=4)
    dim = ssl_ext.feature_dim
    mean = SSLSoftDTWLoss(ssl_ext, gamma=0.1)(enhanced, clean, reduction="batch")
    summed = SSLSoftDTWLoss(ssl_ext, gamma=0.1 * dim, dim_reduction="sum")(enhanced, clean, reduction="batch")
    assert torch.allclose(summed, dim * mean, rtol=1e-4)  # sdtw_g(a C) = a sdtw_{g/a}(C)


def test_ssl_softdtw_gradient_reaches_the_input_never_the_weights(ssl_ext):
    from sb_mal.losses.ssl import SSLSoftDTWLoss

    clean = _tone(2, 8000)
    enhanced = (_tone(2, 8800, seed=5)).requires_grad_(True)
    SSLSoftDTWLoss(ssl_ext)(enhanced, clean, torch.tensor([1.0, 0.6])).backward()
    assert enhanced.grad is not None and enhanced.grad[0].abs().sum() > 0 and enhanced.grad[1].abs().sum() > 0
    assert torch.all(enhanced.grad[1, round(0.6 * 8800):] == 0)  # padding of the prediction: no gradient
    assert all(p.grad is None and not p.requires_grad for p in ssl_ext.model.parameters())
    with pytest.raises(ValueError, match="distance"):
        SSLSoftDTWLoss(ssl_ext, distance="l2")
