"""The shared comparison (tests/helpers.py) can fail: a compiled model that differs from eager in an
output, an input gradient or a parameter gradient is caught. torch.compile is replaced by a wrapper
that returns a wrong model, so nothing is compiled here."""
import pytest
import torch
import torch.nn as nn

from helpers import assert_compiled_matches_eager


class Scale(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.linspace(0.5, 1.5, 5, dtype=torch.float64))

    def forward(self, x):
        return (x * self.weight).tanh()


def _wrong(kind):
    """A stand-in for torch.compile whose result is off by 1e-6 in one place."""
    def compile(fn, **kwargs):
        def compiled(x):
            out = fn(x)
            if kind == "output":
                return out + 1e-6
            if kind == "input grad":      # same value, gradient of x off by 1e-6
                return out + 1e-6 * (x - x.detach())
            if kind == "parameter grad":  # same value, gradient of the weight off by 1e-6
                return out + 1e-6 * (fn.weight - fn.weight.detach())
            return out
        return compiled
    return compile


@pytest.mark.parametrize("kind", ["output", "input grad", "parameter grad"])
def test_a_difference_anywhere_fails(monkeypatch, kind):
    model, x = Scale(), torch.randn(3, 5, dtype=torch.float64)
    monkeypatch.setattr(torch, "compile", _wrong("none"))
    assert_compiled_matches_eager(model, (x,), rtol=1e-9, atol=1e-9)
    monkeypatch.setattr(torch, "compile", _wrong(kind))
    with pytest.raises(AssertionError, match=kind):
        assert_compiled_matches_eager(model, (x,), rtol=1e-9, atol=1e-9)
    assert_compiled_matches_eager(model, (x,), rtol=1e-5, atol=1e-5)  # within a looser tolerance


def test_rows_leave_out_only_the_other_rows(monkeypatch):
    model, x = Scale(), torch.randn(3, 5, dtype=torch.float64)
    rows = torch.tensor([True, False, True])[:, None]

    def compile(fn, **kwargs):
        return lambda x: torch.where(rows, fn(x), fn(x) + 1.0)
    monkeypatch.setattr(torch, "compile", compile)
    assert_compiled_matches_eager(model, (x,), rtol=1e-9, atol=1e-9, rows=rows)
    with pytest.raises(AssertionError, match="output"):
        assert_compiled_matches_eager(model, (x,), rtol=1e-9, atol=1e-9, rows=~rows)


def test_eager_nan_grads_still_needs_a_finite_compiled_run(monkeypatch):
    model, x = Scale(), torch.randn(3, 5, dtype=torch.float64)

    def compile(fn, **kwargs):
        return lambda x: fn(x) * torch.where(x > 0, 1.0, float("nan"))
    monkeypatch.setattr(torch, "compile", compile)
    with pytest.raises(AssertionError, match="not finite"):
        assert_compiled_matches_eager(model, (x,), rtol=1e-9, atol=1e-9, eager_nan_grads=True)
