"""x-transformers (unmodified, pinned in the `realworld` extra): its forgetting transformer
(`attn_data_dependent_alibi=True`, the FoX paper's data-dependent ALiBi) and ALiBi, on the math
path and the flash path (`attn_flash=True`: SDPA with the bias as a float attn_mask), with and
without a key-padding `mask`, and with memory / null keys; a plain decoder as a control.

The Decoder is called on embeddings (B, T, dim), so input gradients are compared too.
"""
import pytest
import torch

pytest.importorskip("x_transformers")
pytest.importorskip("einx")

from x_transformers import Decoder  # noqa: E402

from .common import (Case, check_sites, compare_with_eager, compare_with_inductor,  # noqa: E402
                     left_padding, rows_of, site_test)

DIM, HEADS, DIM_HEAD, BATCH = 32, 2, 16, 2



class _Masked(torch.nn.Module):
    """model(x, mask=valid) as a module (so its parameters are compared too)."""

    def __init__(self, model, valid):
        super().__init__()
        self.model, self.valid = model, valid

    def forward(self, x):
        return self.model(x, mask=self.valid)


def _build(padded: bool, **attn):
    def build(length, train):
        model = Decoder(dim=DIM, depth=1, heads=HEADS, attn_dim_head=DIM_HEAD, **attn)
        x = torch.randn(BATCH, length, DIM)
        if padded:
            valid = left_padding(BATCH, length)
            return _Masked(model, valid).train(train), (x,), rows_of(valid)
        return model.train(train), (x,), None
    return build


DDA = {"attn_data_dependent_alibi": True}
ALIBI = {"alibi_pos_bias": True}
FLASH = {"attn_flash": True}

CASES = [
    Case("xt-fox-math", "x-transformers", "Decoder(attn_data_dependent_alibi)", "math",
         _build(False, **DDA), sites=("proven",)),
    Case("xt-fox-math-padded", "x-transformers", "Decoder(attn_data_dependent_alibi)",
         "math, padding mask", _build(True, **DDA), sites=("guarded",)),
    Case("xt-fox-flash", "x-transformers", "Decoder(attn_data_dependent_alibi)", "flash (SDPA)",
         _build(False, **DDA, **FLASH), sites=("proven",)),
    Case("xt-fox-flash-padded", "x-transformers", "Decoder(attn_data_dependent_alibi)",
         "flash (SDPA), padding mask", _build(True, **DDA, **FLASH), sites=("guarded",)),
    Case("xt-alibi-math", "x-transformers", "Decoder(alibi_pos_bias)", "math",
         _build(False, **ALIBI), sites=("guarded",)),
    Case("xt-alibi-math-padded", "x-transformers", "Decoder(alibi_pos_bias)", "math, padding mask",
         _build(True, **ALIBI), sites=("guarded",)),
    Case("xt-alibi-flash", "x-transformers", "Decoder(alibi_pos_bias)", "flash (SDPA)",
         _build(False, **ALIBI, **FLASH), sites=("guarded",)),
    Case("xt-alibi-flash-padded", "x-transformers", "Decoder(alibi_pos_bias)",
         "flash (SDPA), padding mask", _build(True, **ALIBI, **FLASH), sites=("guarded",)),
    # Memory and null keys get bias 0 from every query: b_mem would have to equal lam_i for
    # every i, so no key-side gate exists. These must stay declined.
    Case("xt-fox-memory-kv", "x-transformers", "Decoder(attn_data_dependent_alibi, attn_num_mem_kv=2)",
         "math", _build(False, **DDA, attn_num_mem_kv=2), runs=("eval",),
         note="memory keys: bias 0 for every query, not a forget gate"),
    Case("xt-fox-null-kv", "x-transformers", "Decoder(attn_data_dependent_alibi, attn_add_zero_kv)",
         "math", _build(False, **DDA, attn_add_zero_kv=True), runs=("eval",),
         note="a null key: bias 0 for every query, not a forget gate"),
    Case("xt-plain", "x-transformers", "Decoder (no bias)", "math", _build(False), control=True,
         decline="no forget-gate bias", runs=(), extra={"grads": True}),
    Case("xt-plain-flash", "x-transformers", "Decoder (no bias)", "flash (SDPA)",
         _build(False, **FLASH), control=True, decline="plain causal", runs=()),
]


@pytest.mark.parametrize("case", [site_test(c) for c in CASES])
def test_sites(case):
    check_sites(case)


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("case", [c for c in CASES if not c.control], ids=lambda c: c.id)
def test_matches_eager(case, mode):
    if mode not in case.runs:
        pytest.skip(f"{case.id}: {mode} not run (kept to the CI budget)")
    compare_with_eager(case, mode)


@pytest.mark.parametrize("case", [c for c in CASES if c.control], ids=lambda c: c.id)
def test_control_bit_identical_to_inductor(case):
    compare_with_inductor(case)
