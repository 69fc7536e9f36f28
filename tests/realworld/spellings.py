"""Small FoX / ALiBi attention modules written the way third-party code writes them: einx and
einops spellings (tests/realworld/test_einx_einops.py) and the plain-PyTorch reference forms of
the FoX authors' tests and of common ALiBi code (tests/realworld/test_torch_spellings.py).

Every module maps x (B, T, DIM) to (B, T, DIM): q, k, v and the forget-gate logits are
projections of x, so parameter and input gradients are compared. einx and einops are imported only
by the spellings that use them (the plain-PyTorch cases run without the `realworld` extra)."""

import torch
import torch.nn as nn
import torch.nn.functional as F

DIM, HEADS, HEAD_DIM, BATCH = 32, 2, 16, 2


class Attention(nn.Module):
    """One attention layer; `spelling` picks how the scores, the mask and the bias are written."""

    def __init__(self, spelling: str, kv_heads: int = HEADS, heads: int = HEADS):
        super().__init__()
        self.spelling, self.kv_heads, self.heads = spelling, kv_heads, heads
        self.q = nn.Linear(DIM, heads * HEAD_DIM)
        self.kv = nn.Linear(DIM, 2 * kv_heads * HEAD_DIM)
        self.fgate = nn.Linear(DIM, heads)
        self.out = nn.Linear(heads * HEAD_DIM, DIM)
        slopes = [2 ** (-8 * (h + 1) / heads) for h in range(heads)]
        self.slopes = slopes  # Python numbers: the decay is proven from the graph

    def forward(self, x):
        b, t, _ = x.shape
        q = self.q(x).view(b, t, self.heads, HEAD_DIM).transpose(1, 2)
        k, v = self.kv(x).view(b, t, 2, self.kv_heads, HEAD_DIM).permute(2, 0, 3, 1, 4)
        lam = F.logsigmoid(self.fgate(x)).cumsum(dim=1).transpose(1, 2)  # (B, H, T)
        scale = HEAD_DIM ** -0.5
        o = getattr(self, "_" + self.spelling.replace("-", "_"))(q, k, v, lam, scale, t, x.device)
        return self.out(o.transpose(1, 2).reshape(b, t, -1))

    # ---- einx / einops ------------------------------------------------------------------------
    def _einx_subtract(self, q, k, v, lam, scale, t, device):
        import einx
        s = q @ k.transpose(-1, -2) * scale
        s = s + einx.subtract("b h i, b h j -> b h i j", lam, lam)
        s = s.masked_fill(torch.ones(t, t, dtype=torch.bool, device=device).triu(1), float("-inf"))
        return s.softmax(-1) @ v

    def _einx_subtract_flipped(self, q, k, v, lam, scale, t, device):
        """lam_j - lam_i: the gate grows toward the past (near miss: never pruned)."""
        import einx
        s = q @ k.transpose(-1, -2) * scale
        s = s + einx.subtract("b h j, b h i -> b h i j", lam, lam)
        s = s.masked_fill(torch.ones(t, t, dtype=torch.bool, device=device).triu(1), float("-inf"))
        return s.softmax(-1) @ v

    def _einx_multiply(self, q, k, v, lam, scale, t, device):
        """lam_i * lam_j: a product, no key-side gate (near miss)."""
        import einx
        s = q @ k.transpose(-1, -2) * scale
        s = s + einx.multiply("b h i, b h j -> b h i j", lam, lam)
        s = s.masked_fill(torch.ones(t, t, dtype=torch.bool, device=device).triu(1), float("-inf"))
        return s.softmax(-1) @ v

    def _einx_subtract_composed(self, q, k, v, lam, scale, t, device):
        """A bias over merged (b h) axes through a composition einx keeps opaque (near miss)."""
        import einx
        s = q @ k.transpose(-1, -2) * scale
        flat = lam.reshape(-1, t)
        bias = einx.subtract("(b h) i, (b h) j -> b h i j", flat, flat, h=self.heads)
        s = s + bias
        s = s.masked_fill(torch.ones(t, t, dtype=torch.bool, device=device).triu(1), float("-inf"))
        return s.softmax(-1) @ v

    def _einx_dot(self, q, k, v, lam, scale, t, device):
        import einx
        s = einx.dot("b h i d, b h j d -> b h i j", q, k) * scale
        s = s + lam[..., :, None] - lam[..., None, :]
        s = s.masked_fill(torch.ones(t, t, dtype=torch.bool, device=device).triu(1), float("-inf"))
        return s.softmax(-1) @ v

    def _einops_einsum(self, q, k, v, lam, scale, t, device):
        import einops
        s = einops.einsum(q, k, "b h i d, b h j d -> b h i j") * scale
        s = s + einops.rearrange(lam, "b h i -> b h i 1") - einops.rearrange(lam, "b h j -> b h 1 j")
        s = s.masked_fill(torch.ones(t, t, dtype=torch.bool, device=device).triu(1), float("-inf"))
        return einops.einsum(s.softmax(-1), v, "b h i j, b h j d -> b h i d")

    def _einops_gqa_repeat(self, q, k, v, lam, scale, t, device):
        import einops
        k, v = (einops.repeat(x, "b h n d -> b (h r) n d", r=self.heads // self.kv_heads)
                for x in (k, v))
        s = q @ k.transpose(-1, -2) * scale + lam[..., :, None] - lam[..., None, :]
        s = s.masked_fill(torch.ones(t, t, dtype=torch.bool, device=device).triu(1), float("-inf"))
        return s.softmax(-1) @ v

    # ---- plain PyTorch ------------------------------------------------------------------------
    def _einops_gqa_repeat_tiled(self, q, k, v, lam, scale, t, device):
        """'(r h)': query head h reads key head h % Hk; passed to the op as repeated."""
        import einops
        k, v = (einops.repeat(x, "b h n d -> b (r h) n d", r=self.heads // self.kv_heads)
                for x in (k, v))
        s = q @ k.transpose(-1, -2) * scale + lam[..., :, None] - lam[..., None, :]
        s = s.masked_fill(torch.ones(t, t, dtype=torch.bool, device=device).triu(1), float("-inf"))
        return s.softmax(-1) @ v

    def _bloom_bmm(self, q, k, v, lam, scale, t, device):
        """Bloom's layout: (B*H, T, D) operands, baddbmm with the gate as its input, the scores
        viewed as (B, H, T, T) for the mask and softmax, the probabilities viewed back for bmm."""
        b, h, _, d = q.shape
        q3, k3, v3 = (x.reshape(b * h, t, d) for x in (q, k, v))
        gate3 = (-lam).reshape(b * h, 1, t)  # key-side -lam_j
        s3 = gate3.baddbmm(q3, k3.transpose(1, 2), beta=1.0, alpha=scale)
        s = s3.view(b, h, t, -1)
        s = s.masked_fill(torch.ones(t, t, dtype=torch.bool, device=device).triu(1),
                          torch.finfo(s.dtype).min)
        p = F.softmax(s, dim=-1, dtype=torch.float32).to(q.dtype)
        return torch.bmm(p.view(b * h, t, -1), v3).view(b, h, t, -1)

    def _fox_reference(self, q, k, v, lam, scale, t, device):
        """As the FoX authors' tests write it: boolean index assignment with mask == 0."""
        s = q @ k.transpose(-1, -2) * scale + (lam[..., :, None] - lam[..., None, :])
        mask = torch.tril(torch.ones(t, t, device=device))
        s[:, :, mask == 0] = float("-inf")
        return torch.softmax(s, dim=-1) @ v

    def _index_assign_tensor(self, q, k, v, lam, scale, t, device):
        s = q @ k.transpose(-1, -2) * scale + (lam[..., :, None] - lam[..., None, :])
        keep = torch.ones(t, t, dtype=torch.bool, device=device).tril()
        s[..., ~keep] = torch.tensor(float("-inf"), device=device)
        return torch.softmax(s, dim=-1) @ v

    def _where_0d_tensor(self, q, k, v, lam, scale, t, device):
        i = torch.arange(t, device=device)
        s = q @ k.transpose(-1, -2) * scale + (lam[..., :, None] - lam[..., None, :])
        s = torch.where(i[:, None] >= i[None, :], s, torch.tensor(float("-inf"), device=device))
        return torch.softmax(s, dim=-1) @ v

    @staticmethod
    def _generate_square_subsequent_mask(sz):
        """The mask helper of PyTorch's older nn.Transformer tutorial, as it is copied into
        projects: 0.0 on and below the diagonal, -inf above, built through a 0 / 1 mask."""
        mask = (torch.triu(torch.ones(sz, sz)) == 1).transpose(0, 1)
        mask = mask.float().masked_fill(mask == 0, float("-inf")).masked_fill(mask == 1, float(0.0))
        return mask

    def _tutorial_square_subsequent_mask(self, q, k, v, lam, scale, t, device):
        s = torch.matmul(q, k.transpose(-2, -1)) * scale + lam.unsqueeze(-1) - lam.unsqueeze(-2)
        s = s + self._generate_square_subsequent_mask(t).to(device)
        return torch.matmul(F.softmax(s, dim=-1), v)

    @staticmethod
    def _fill_with_neg_inf(t):
        """fairseq's utils.fill_with_neg_inf: FP16-compatible fill of a tensor with -inf."""
        return t.float().fill_(float("-inf")).type_as(t)

    def _fairseq_future_mask(self, q, k, v, lam, scale, t, device):
        """fairseq's multi-head attention on (B * H, T, T) scores: its buffered_future_mask,
        triu(fill_with_neg_inf(zeros), 1), added in place, and the gate's bias after it."""
        q, k, v, lam = (x.flatten(0, 1) for x in (q, k, v, lam))
        attn_weights = torch.bmm(q * scale, k.transpose(1, 2))
        future_mask = torch.triu(self._fill_with_neg_inf(torch.zeros([t, t])), 1).to(attn_weights)
        attn_weights += future_mask.unsqueeze(0)
        attn_weights = attn_weights + lam[:, :, None] - lam[:, None, :]
        probs = F.softmax(attn_weights, dim=-1)
        return torch.bmm(probs, v).view(-1, self.heads, t, v.shape[-1])

    def _alibi(self, q, k, v, scale, t, device, distance):
        slopes = torch.tensor(self.slopes, device=device)[:, None, None]
        s = q @ k.transpose(-1, -2) * scale - slopes * distance
        s = s.masked_fill(torch.ones(t, t, dtype=torch.bool, device=device).triu(1), float("-inf"))
        return s.softmax(-1) @ v

    def _alibi_clamp_min(self, q, k, v, lam, scale, t, device):
        i = torch.arange(t, device=device)
        return self._alibi(q, k, v, scale, t, device, (i[:, None] - i[None, :]).clamp_min(0))

    def _alibi_abs(self, q, k, v, lam, scale, t, device):
        i = torch.arange(t, device=device)
        return self._alibi(q, k, v, scale, t, device, (i[None, :] - i[:, None]).abs())

    def _alibi_relu(self, q, k, v, lam, scale, t, device):
        i = torch.arange(t, device=device)
        return self._alibi(q, k, v, scale, t, device, torch.relu(i[:, None] - i[None, :]))

    def _alibi_linear(self, q, k, v, lam, scale, t, device):
        i = torch.arange(t, device=device)
        return self._alibi(q, k, v, scale, t, device, i[:, None] - i[None, :])

    def _dead_clone(self, q, k, v, lam, scale, t, device):
        s = q @ k.transpose(-1, -2) * scale
        kept = s.clone()  # noqa: F841 (an intermediate kept "for debugging", never used)
        s = s + lam[..., :, None] - lam[..., None, :]
        s = s.masked_fill(torch.ones(t, t, dtype=torch.bool, device=device).triu(1), float("-inf"))
        return s.softmax(-1) @ v

    def _attend_with_max(self, q, k, v, lam, t, scale, device):
        s = q @ k.transpose(-1, -2) * scale + lam[..., :, None] - lam[..., None, :]
        s = s.masked_fill(torch.ones(t, t, dtype=torch.bool, device=device).triu(1), float("-inf"))
        return s.softmax(-1) @ v, s.amax(-1)

    def _dead_max(self, q, k, v, lam, scale, t, device):
        o, _m = self._attend_with_max(q, k, v, lam, t, scale, device)
        return o

    def _pad_zero_width(self, q, k, v, lam, scale, t, device):
        bias = F.pad(lam[..., :, None] - lam[..., None, :], (0, 0))
        bias = bias.masked_fill(torch.ones(t, t, dtype=torch.bool, device=device).triu(1),
                                float("-inf"))
        return F.scaled_dot_product_attention(q, k, v,
                                              attn_mask=bias.expand(q.shape[0], self.heads, -1, -1))
