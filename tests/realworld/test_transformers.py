"""Hugging Face transformers (unmodified, pinned in the `realworld` extra): the ALiBi models
Falcon (`alibi=True`, eager and sdpa attention), Bloom and MPT (eager only: transformers has no
sdpa path for them), from tiny random configs, with and without a left-padded `attention_mask`,
and greedy `generate()` with a cache; GPT-2 and Llama as controls (declined, bit-identical to plain
Inductor). Models are called on `inputs_embeds`, so input gradients are compared too.
"""
import logging

import pytest
import torch

transformers = pytest.importorskip("transformers")

from .common import (AOT, Case, check_sites, compare_with_eager, compare_with_inductor,  # noqa: E402
                     left_padding, rows_of, seed_of, site_test)

HIDDEN, HEADS, BATCH, VOCAB = 32, 2, 2, 64
COMMON = dict(attention_dropout=0.0, hidden_dropout=0.0)


def _config(model: str, attn: str):
    t = transformers
    if model == "falcon":
        cfg = t.FalconConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=1,
                             num_attention_heads=HEADS, alibi=True, new_decoder_architecture=False,
                             multi_query=False, parallel_attn=True, bias=False, **COMMON)
        classes = (t.FalconModel, t.FalconForCausalLM)
    elif model == "bloom":
        cfg = t.BloomConfig(vocab_size=VOCAB, hidden_size=HIDDEN, n_layer=1, n_head=HEADS, **COMMON)
        classes = (t.BloomModel, t.BloomForCausalLM)
    elif model == "mpt":
        cfg = t.MptConfig(vocab_size=VOCAB, d_model=HIDDEN, n_layers=1, n_heads=HEADS,
                          expansion_ratio=2, max_seq_len=512)
        classes = (t.MptModel, t.MptForCausalLM)
    elif model == "gpt2":
        cfg = t.GPT2Config(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=1, n_head=HEADS, n_positions=512,
                           attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0)
        classes = (t.GPT2Model, t.GPT2LMHeadModel)
    elif model == "llama":
        cfg = t.LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=64,
                            num_hidden_layers=1, num_attention_heads=HEADS, num_key_value_heads=1,
                            max_position_embeddings=512)
        classes = (t.LlamaModel, t.LlamaForCausalLM)
    else:
        raise ValueError(model)
    cfg._attn_implementation = attn
    return cfg, classes


class _Embeds(torch.nn.Module):
    """model(inputs_embeds=x, attention_mask=...).last_hidden_state as a module of x alone."""

    def __init__(self, model, mask):
        super().__init__()
        self.model, self.mask = model, mask

    def forward(self, x):
        return self.model(inputs_embeds=x, attention_mask=self.mask).last_hidden_state


def _build(model: str, attn: str, padded: bool):
    def build(length, train):
        cfg, (cls, _) = _config(model, attn)
        net = cls(cfg)
        x = torch.randn(BATCH, length, HIDDEN)
        valid = left_padding(BATCH, length) if padded else None
        mask = valid.long() if padded else None
        return _Embeds(net, mask).train(train), (x,), (rows_of(valid) if padded else None)
    return build



CASES = []
for _attn in ("eager", "sdpa"):
    for _padded in (False, True):
        CASES.append(Case(
            f"hf-falcon-{_attn}{'-padded' if _padded else ''}", "transformers", "Falcon (alibi=True)",
            _attn + (", left padding" if _padded else ""), _build("falcon", _attn, _padded),
            sites=("guarded",)))
for _model, _name, _blocker in (("bloom", "Bloom", None), ("mpt", "MPT", None)):
    for _padded in (False, True):
        CASES.append(Case(
            f"hf-{_model}-eager{'-padded' if _padded else ''}", "transformers", _name,
            "eager" + (", left padding" if _padded else ""), _build(_model, "eager", _padded),
            sites=("guarded",), blocker=_blocker))
CASES += [
    Case("hf-gpt2-sdpa", "transformers", "GPT-2 (control)", "sdpa", _build("gpt2", "sdpa", False),
         control=True, runs=()),
    Case("hf-llama-eager", "transformers", "Llama, GQA (control)", "eager",
         _build("llama", "eager", False), control=True, decline="no forget-gate bias", runs=()),
]


@pytest.mark.parametrize("case", [site_test(c) for c in CASES])
def test_sites(case):
    check_sites(case)


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("case", [c for c in CASES if not c.control], ids=lambda c: c.id)
def test_matches_eager(case, mode):
    compare_with_eager(case, mode)


@pytest.mark.parametrize("case", [c for c in CASES if c.control], ids=lambda c: c.id)
def test_control_bit_identical_to_inductor(case):
    compare_with_inductor(case)


# ----------------------------------------------------------------------------------------------
# generate() with a cache: prefill (M = N) and decoding steps (M = 1 query against the cache)

class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.rewrote, self.declined = [], []

    def emit(self, record):
        message = record.getMessage()
        if message.startswith("rewrote "):
            self.rewrote.append(message[len("rewrote "):])
        elif message.startswith("declined "):
            self.declined.append(message[len("declined "):])


def generate(model: str, attn: str, compiled: bool, new_tokens: int = 3, length: int = 77):
    """Greedy generation from a left-padded prompt; returns (sequences, scores, what the backend
    logged)."""
    torch.manual_seed(seed_of(f"generate-{model}-{attn}"))
    cfg, (_, lm) = _config(model, attn)
    net = lm(cfg).eval()
    ids = torch.randint(0, VOCAB, (BATCH, length))
    mask = left_padding(BATCH, length).long()
    capture = _Capture()
    log = logging.getLogger("foxcompile")
    level = log.level
    if compiled:
        torch._dynamo.reset()
        net.forward = torch.compile(net.forward, backend="fox_acp", options=AOT)
        log.addHandler(capture)
        log.setLevel(logging.INFO)
    try:
        with torch.no_grad():
            out = net.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False,
                               output_scores=True, return_dict_in_generate=True,
                               pad_token_id=0, use_cache=True)
    finally:
        log.removeHandler(capture)
        log.setLevel(level)
    return out.sequences, torch.stack(out.scores), capture


GENERATE = [("falcon", "sdpa"), ("bloom", "eager")]
# graphs compiled during generate(new_tokens=3): the prefill, the first decoding step, and the
# decoding step recompiled with a dynamic cache length; each one site
GENERATE_SITES = 3
MODEL_NAMES = {"falcon": "Falcon (alibi=True)", "bloom": "Bloom", "mpt": "MPT"}


@pytest.mark.parametrize("model,attn", GENERATE, ids=[f"{m}-{a}" for m, a in GENERATE])
def test_generate_matches_eager(model, attn):
    seq_e, scores_e, _ = generate(model, attn, compiled=False)
    seq_c, scores_c, capture = generate(model, attn, compiled=True)
    assert len(capture.rewrote) == GENERATE_SITES and not capture.declined, (
        "\n".join(["rewrote:", *capture.rewrote, "declined:", *capture.declined]))
    assert all("decay guarded" in site for site in capture.rewrote), capture.rewrote
    torch.testing.assert_close(scores_c, scores_e, rtol=2e-4, atol=2e-5)
    assert torch.equal(seq_c, seq_e)
