"""Which graph tensors are q, k and v, and how to view them as the op's (B, H, T, D).

The scores are (batch..., i, j) with nb batch dims: none, (B*H,), (B, H), or (B, Hk, G) when q is
split into groups of heads. The op's B is the first batch dim and its H the others merged, so
(B, Hk, G) gives H = Hk * G. An Operand lists, for each of B, H, T, D, the node dims that form it
(several are merged in order, none means size 1): permute, flatten and unsqueeze, nothing copied.
q and the output must have every batch dim in full. k and v may have fewer heads, Hk, with q head h
reading key head h // (H / Hk): a head dim of size 1 or a missing group letter (broadcast), or a
repeat `ungroup` removes (repeat_interleave, or unsqueeze + expand + reshape); never a tiled repeat
(head h reading h % Hk), which stays as it is.
"""
from . import graph as g, views
from .site import Operand


class NotAnOperand(Exception):
    """The product is not one the op can take; the message says why."""


def _einsum(node) -> tuple[str, tuple, list[str], str]:
    """An einsum's equation, its operands (passed one by one or as one list), the letters of
    each operand and those of the output."""
    eq, operands = node.args[0], g.sequence_arg(node, 1)
    spec = eq.replace(" ", "")
    if "..." in spec or "->" not in spec:
        raise NotAnOperand(f"einsum {spec!r} uses an implicit output or '...'")
    inputs, output = spec.split("->")
    return eq, operands, inputs.split(","), output


def _batch_groups(nb: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The score batch dims that form the op's B and H."""
    return ((0,) if nb else ()), tuple(range(1, nb))


def _operand(node, dims: list, nb: int) -> Operand:
    """dims: for each score dim (batch..., time, feature), the node dim holding it or None."""
    batch = [tuple(dims[c] for c in group if dims[c] is not None) for group in _batch_groups(nb)]
    return Operand(node, (*batch, (dims[nb],), (dims[nb + 1],)))


def _matmul_dims(x, nb: int, last_two: tuple[int, int]) -> list:
    """A matmul operand's dims: batch dims broadcast from the right, then `last_two` (offsets from
    the end) for the time and feature dims."""
    rank = g.rank(x)
    if rank is None or rank < 2:
        raise NotAnOperand(f"{getattr(x, 'name', x)} is not a batch of matrices")
    lead = nb - (rank - 2)
    return [c - lead if c >= lead else None for c in range(nb)] + [rank + d for d in last_two]


def _check(name: str, x, dims: list, scores, nb: int, full_heads: bool) -> None:
    """q (full_heads) has every batch dim of the scores; k and v have the batch in full and a
    prefix of the head dims (the rest size 1), so that head h reads key head h // G."""
    want = g.shape(scores)[:nb]
    have = [g.size(x, dims[c]) for c in range(nb)]
    b, h = _batch_groups(nb)
    heads = [c for c in h if have[c] != 1]
    prefix = list(h[:h.index(heads[-1]) + 1]) if heads else []
    needed = list(b) + (list(h) if full_heads else prefix)
    if not all(g.same_size(have[c], want[c]) for c in needed):
        layout = "the heads of q" if full_heads else "whole heads of q (or a tiled order)"
        raise NotAnOperand(f"{name} {tuple(g.shape(x))} does not line up with the scores "
                           f"{tuple(want) + tuple(g.shape(scores)[nb:])}: its batch dims are not "
                           f"{layout}")


def _merged(name: str, x: Operand) -> Operand:
    """x, when merging each group of its dims (q split into (Hk, G) heads) is a view: each dim
    steps over the whole of the next one. A merge that would copy is declined."""
    tensor = g.value(x.node)
    size, stride = tensor.shape, tensor.stride()
    for group in x.groups:
        for a, b in zip(group, group[1:]):
            if 1 not in (size[a], size[b]) and not g.same_size(stride[a], stride[b] * size[b]):
                raise NotAnOperand(f"{name}'s head dims {group} merge into one only by copying")
    return x


def qk_operands(leaf, nb: int) -> tuple[Operand, Operand, str]:
    """q and k of a QK product leaf, and the product's spelling."""
    k = g.kind(leaf)
    if k in ("matmul", "baddbmm"):
        a, b = ((g.arg(leaf, 0), g.arg(leaf, 1)) if k == "matmul"
                else (g.arg(leaf, 1, "batch1"), g.arg(leaf, 2, "batch2")))
        q_dims, k_dims = _matmul_dims(a, nb, (-2, -1)), _matmul_dims(b, nb, (-1, -2))
        spelling = "bmm" if k == "matmul" and "bmm" in str(leaf.target) else k
    elif k == "einsum":
        eq, operands, (la, lb), lo = _einsum(leaf)
        if len(operands) != 2 or len(lo) != nb + 2:
            raise NotAnOperand(f"einsum {eq!r} is not a two-operand product with {nb} batch dims")
        i, j = lo[-2], lo[-1]
        a, b = operands
        if i in lb and j in la:
            a, b, la, lb = b, a, lb, la
        contracted = (set(la) & set(lb)) - set(lo)
        batch = lo[:-2]
        if (i not in la or j not in lb or len(contracted) != 1 or len(set(la)) != len(la)
                or len(set(lb)) != len(lb) or not set(la) <= set(batch) | {i} | contracted
                or not set(lb) <= set(batch) | {j} | contracted):
            raise NotAnOperand(f"einsum {eq!r} is not q.k over one feature dim")
        d = contracted.pop()
        q_dims = [la.index(x) if x in la else None for x in batch] + [la.index(i), la.index(d)]
        k_dims = [lb.index(x) if x in lb else None for x in batch] + [lb.index(j), lb.index(d)]
        spelling = "einsum"
    else:
        raise NotAnOperand(f"{g.name(leaf)} is not a matrix product")
    _check("q", a, q_dims, leaf, nb, full_heads=True)
    _check("k", b, k_dims, leaf, nb, full_heads=False)
    return _merged("q", _operand(a, q_dims, nb)), _merged("k", _operand(b, k_dims, nb)), spelling


def pv_operand(pv, probs, nb: int) -> tuple[Operand, Operand]:
    """v of the probabilities-times-values product, and the product's output as an Operand (its
    dims for the op's (B, H, M, D))."""
    k = g.kind(pv)
    rank = nb + 2
    if k == "matmul":
        if pv.args[0] is not probs:
            raise NotAnOperand("the probabilities are the right operand of the value product")
        v = pv.args[1]
        v_dims, out_dims = _matmul_dims(v, nb, (-2, -1)), list(range(rank))
        if g.rank(pv) != rank:
            raise NotAnOperand("the value product broadcasts the probabilities")
    elif k == "einsum":
        eq, operands, letters, lo = _einsum(pv)
        if len(operands) != 2 or probs not in operands:
            raise NotAnOperand(f"einsum {eq!r} is not probabilities times values")
        p_index = operands.index(probs)
        lp, lv, v = letters[p_index], letters[1 - p_index], operands[1 - p_index]
        if len(lp) != rank or len(set(lp)) != rank or len(set(lv)) != len(lv):
            raise NotAnOperand(f"einsum {eq!r} does not keep {nb} batch dims")
        batch, i, j = lp[:nb], lp[nb], lp[nb + 1]
        features = [x for x in lv if x not in lp]
        if (j not in lv or j in lo or len(features) != 1 or i in lv
                or sorted(lo) != sorted(batch + i + features[0])):
            raise NotAnOperand(f"einsum {eq!r} is not a sum over keys of p times v")
        e = features[0]
        v_dims = [lv.index(x) if x in lv else None for x in batch] + [lv.index(j), lv.index(e)]
        out_dims = [lo.index(x) for x in batch + i + e]
    else:
        raise NotAnOperand(f"the probabilities feed {pv.target}, not a value product")
    _check("v", v, v_dims, probs, nb, full_heads=False)
    return _merged("v", _operand(v, v_dims, nb)), _operand(pv, out_dims, nb)


def _unpermuted(x: Operand) -> Operand:
    """The same tensor seen through its transposes and permutes: fewer views to stack."""
    node, groups = x.node, x.groups
    while g.kind(node) in views.PERMUTES and (dims := views.sources(node)) is not None:
        groups = tuple(tuple(dims[d] for d in group) for group in groups)
        node = node.args[0]
    return Operand(node, groups)


def _new_axis_at(node, axis: int):
    """x when node is x.unsqueeze(axis) or x[..., None, ...] with the None at `axis` and every
    other dim of x whole and in place, else None."""
    k = g.kind(node)
    dims = views.sources(node) if k in ("unsqueeze", "getitem") else None
    if dims is None or dims[axis] != views.NEW:
        return None
    rest = dims[:axis] + dims[axis + 1:]
    index = node.args[1] if k == "getitem" else ()
    parts = index if isinstance(index, tuple) else (index,)
    whole = all(p == slice(None) for p in parts if isinstance(p, slice))
    return node.args[0] if rest == list(range(len(rest))) and whole else None


def ungroup(x: Operand) -> Operand | None:
    """k or v built by repeating each head of a tensor G times in a row (head h reads head
    h // G): that tensor, with Hk = H / G heads. None for anything else."""
    x = _unpermuted(x)
    if len(x.groups[1]) != 1:
        return None
    node, h = x.node, x.groups[1][0]
    k = g.kind(node)
    if k == "repeat_interleave":
        repeats, dim = g.arg(node, 1, "repeats"), g.arg(node, 2, "dim")
        if (isinstance(repeats, int) and dim is not None and g.arg(node, 3, "output_size") is None
                and g.normalize_dim(dim, g.rank(node)) == h):
            return Operand(node.args[0], x.groups)
        return None
    if k == "expand":  # a head dim of size 1 broadcast to H
        base = node.args[0]
        if g.shape(base)[h:h + 1] == (1,) and _same_except(g.shape(base), g.shape(node), h):
            return Operand(base, x.groups)
        return None
    if k != "reshape" or g.kind(node.args[0]) != "expand":
        return None
    expanded, shp = node.args[0], g.shape(node)
    split = g.shape(expanded)  # (..., Hk, G, ...) merged into (..., H, ...)
    if (len(split) != len(shp) + 1 or not g.same_size(g.numel(split[h:h + 2]), shp[h])
            or not _same_except(split[:h + 1] + split[h + 2:], shp, h)):
        return None
    single = expanded.args[0]
    if g.shape(single)[h + 1:h + 2] != (1,) or not _same_except(g.shape(single), split, h + 1):
        return None
    base = _new_axis_at(single, h + 1)
    return None if base is None else Operand(base, x.groups)


def _same_except(a, b, skip: int) -> bool:
    """Shapes a and b agree in every dim but `skip`."""
    return len(a) == len(b) and g.same_shape(a[:skip] + a[skip + 1:], b[:skip] + b[skip + 1:])


def heads(x: Operand):
    return g.numel(g.shape(x.node)[d] for d in x.groups[1])


def key_value(k: Operand, v: Operand) -> tuple[Operand, Operand]:
    """k and v with one head count (the op takes them with one shape): both with their repeats
    peeled off where both can be, else as written."""
    for k_form in (ungroup(k), _unpermuted(k)):
        for v_form in (ungroup(v), _unpermuted(v)):
            if None not in (k_form, v_form) and g.same_size(heads(k_form), heads(v_form)):
                return k_form, v_form
    raise NotAnOperand(f"k has {heads(k)} heads and v has {heads(v)}: the op takes one count")
