"""Helpers shared by several test modules (tests/conftest.py puts tests/ on sys.path).

`assert_compiled_matches_eager` is the one comparison of a model compiled with fox_acp against
eager: outputs, and the gradients of the floating inputs and of the parameters, at the tolerance
the caller states. Nothing here imports foxcompile (the corpus label tests use `outputs_of` and
`trainable` and must run without it); `torch.compile(..., backend="fox_acp")` needs the backend
registered, by the package's entry point or by the calling test module's `import foxcompile`.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

AOT = {"fox.compiler": "aot_eager"}  # AOTAutograd without Inductor's C++ build: fast on CPU


def outputs_of(out: Any) -> list[Tensor]:
    return list(out) if isinstance(out, (tuple, list)) else [out]


def trainable(fn: Callable) -> list[torch.nn.Parameter]:
    """The parameters a callable owns (a module, a bound method of one, or none)."""
    owner = fn if isinstance(fn, torch.nn.Module) else getattr(fn, "__self__", None)
    if isinstance(owner, torch.nn.Module):
        return [p for p in owner.parameters() if p.requires_grad]
    return []


def run_with_grads(fn: Callable, inputs: tuple[Tensor, ...], *, cotangent_seed: int, rng_seed: int | None = None,
                   params: list[torch.nn.Parameter] | None = None, rows: Tensor | None = None,
                   grads: bool = True):
    """Forward and backward once; returns (outputs, grads of floating inputs, grads of `params`).

    `params` defaults to the parameters `fn` owns; pass the eager callable's parameters when `fn` is
    a compiled wrapper of a bound method (which does not expose its module).

    Every output gets a fixed random cotangent (positions holding -inf or NaN, such as a returned
    masked score matrix, are left out of the loss). `rng_seed` seeds torch's RNG right before the
    forward, so a model with active dropout draws the same mask in eager and compiled runs. `rows`
    (a boolean broadcast to the first output) keeps only those positions of it in the loss.
    `grads=False` runs the inputs without requires_grad (for models that write into them in place).
    """
    leaves = tuple(t.detach().clone().requires_grad_(grads and t.is_floating_point()) for t in inputs)
    params = trainable(fn) if params is None else params
    for p in params:
        p.grad = None
    if rng_seed is not None:
        torch.manual_seed(rng_seed)
    outs = outputs_of(fn(*leaves))
    gen = torch.Generator().manual_seed(cotangent_seed)
    loss = 0
    for n, o in enumerate(outs):
        if o.requires_grad:
            w = torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.dtype)
            if n == 0 and rows is not None:
                o = torch.where(rows, o, torch.zeros_like(o))
            loss = loss + (torch.where(torch.isfinite(o), o, torch.zeros_like(o)) * w).sum()
    if torch.is_tensor(loss):
        loss.backward()
    input_grads = [t.grad for t in leaves if t.requires_grad]
    pgrads = [p.grad for p in params]
    for p in params:
        p.grad = None
    return [o.detach() for o in outs], input_grads, pgrads


def assert_same_run(eager, compiled, *, rtol: float, atol: float, what: str = "",
                    rows: Tensor | None = None, equal_nan: bool = False,
                    eager_nan_grads: bool = False) -> None:
    """Compare two run_with_grads results: outputs (the first only on `rows`, when given), input
    grads, parameter grads. `eager_nan_grads`: eager's gradients may hold NaN (its rows without a
    visible key, under a -inf fill, give NaN times a zero cotangent in v's gradient); the compiled
    run must then be finite everywhere, and the gradients are compared where eager's are finite."""
    if eager_nan_grads:
        for kind, xs in zip(("output", "input grad", "parameter grad"), compiled):
            for i, x in enumerate(xs):
                assert x is None or torch.isfinite(x).all(), f"{what}: compiled {kind} {i} is not finite"
    if rows is not None:
        keep = rows.expand(eager[0][0].shape)
        eager = ([eager[0][0][keep], *eager[0][1:]], *eager[1:])
        compiled = ([compiled[0][0][keep], *compiled[0][1:]], *compiled[1:])
    for kind, a, b in zip(("output", "input grad", "parameter grad"), eager, compiled):
        assert len(a) == len(b), f"{what}: number of {kind}s differs"
        for i, (x, y) in enumerate(zip(a, b)):
            if x is None or y is None:
                assert x is None and y is None, f"{what}: {kind} {i} is None on one side only"
                continue
            if eager_nan_grads and kind != "output":
                finite = torch.isfinite(x)
                x, y = x[finite], y[finite]
            torch.testing.assert_close(y, x, rtol=rtol, atol=atol, equal_nan=equal_nan,
                                       msg=lambda m: f"{what}: {kind} {i}: {m}")


def assert_compiled_matches_eager(fn: Callable, inputs: tuple[Tensor, ...], *, rtol: float, atol: float,
                                  options: dict | None = AOT, params: list[torch.nn.Parameter] | None = None,
                                  rows: Tensor | None = None, grads: bool = True, cotangent_seed: int = 1,
                                  rng_seed: int | None = None, equal_nan: bool = False,
                                  eager_nan_grads: bool = False, what: str = "") -> None:
    """Compile `fn` with the fox_acp backend (`options`; None for the default Inductor compiler)
    and hold it to eager on `inputs`: every output, and the gradients of the floating inputs and of
    `params` (default: the parameters `fn` owns) for one fixed random cotangent, within
    rtol / atol. Dynamo's caches are reset first. See run_with_grads for `rows`, `rng_seed` and
    `grads`, assert_same_run for `eager_nan_grads`."""
    params = trainable(fn) if params is None else params
    run = dict(cotangent_seed=cotangent_seed, rng_seed=rng_seed, params=params, rows=rows, grads=grads)
    eager = run_with_grads(fn, inputs, **run)
    torch._dynamo.reset()
    compiled = run_with_grads(torch.compile(fn, backend="fox_acp", options=options), inputs, **run)
    assert_same_run(eager, compiled, rtol=rtol, atol=atol, what=what, rows=rows, equal_nan=equal_nan,
                    eager_nan_grads=eager_nan_grads)


def capture_cuda_graph(step: Callable, args: list[Tensor]):
    """(graph, outputs): step(*args) run once (compiling its kernels) and once on a side stream,
    then captured in a CUDA graph whose replays recompute the outputs in place from args."""
    step(*args)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step(*args)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = step(*args)
    return graph, outputs
