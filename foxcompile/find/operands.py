"""Which graph tensors are q, k and v, and how to view them as (batch..., T, D).

The scores are (batch..., i, j) with `nb` batch dims (0, 1 or 2: (B, H), (B*H,) or none). The QK
product gives q as (batch..., i, d) and k as (batch..., j, d); the PV product gives v as
(batch..., j, e) and the order of the output's dims. Each is an Operand: a node and the permutation
that puts its dims in that order (a view: nothing is copied).
"""
from . import graph as g
from .site import Operand


class NotAnOperand(Exception):
    """The product is not one the op can take; the message says why."""


def _letters(eq: str) -> tuple[list[str], str]:
    eq = eq.replace(" ", "")
    if "..." in eq or "->" not in eq:
        raise NotAnOperand(f"einsum {eq!r} uses an implicit output or '...'")
    inputs, output = eq.split("->")
    return inputs.split(","), output


def _einsum_parts(node):
    eq = node.args[0]
    operands = node.args[1:]
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = tuple(operands[0])
    return eq, operands


def _same_batch(nodes, nb: int, scores) -> None:
    want = g.shape(scores)[:nb]
    for node in nodes:
        have = g.shape(node)
        if len(have) != nb + 2 or not all(g.same_size(a, b) for a, b in zip(have[:nb], want)):
            raise NotAnOperand(f"{node.name} {tuple(have)} does not line up with the scores "
                               f"{tuple(g.shape(scores))} (broadcast or grouped batch dims)")


def qk_operands(leaf, nb: int) -> tuple[Operand, Operand, str]:
    """q and k of a QK product leaf, and the product's spelling."""
    k = g.kind(leaf)
    identity = tuple(range(nb + 2))
    transposed = tuple(range(nb)) + (nb + 1, nb)
    if k in ("matmul", "baddbmm"):
        a, b = (leaf.args[0], leaf.args[1]) if k == "matmul" else (leaf.args[1], leaf.args[2])
        _same_batch((a, b), nb, leaf)
        spelling = "bmm" if k == "matmul" and "bmm" in str(leaf.target) else k
        return Operand(a, identity), Operand(b, transposed), spelling
    if k == "einsum":
        eq, operands = _einsum_parts(leaf)
        (la, lb), lo = _letters(eq)
        if len(operands) != 2 or len(lo) != nb + 2:
            raise NotAnOperand(f"einsum {eq!r} is not a two-operand product with {nb} batch dims")
        i, j = lo[-2], lo[-1]
        a, b = operands
        if i in lb and j in la:
            a, b, la, lb = b, a, lb, la
        contracted = (set(la) & set(lb)) - set(lo)
        batch = lo[:-2]
        if (i not in la or i in lb or j not in lb or j in la or len(contracted) != 1
                or len(la) != nb + 2 or len(lb) != nb + 2 or any(x not in la or x not in lb for x in batch)):
            raise NotAnOperand(f"einsum {eq!r} is not q.k over one feature dim")
        d = contracted.pop()
        q_perm = tuple(la.index(x) for x in batch) + (la.index(i), la.index(d))
        k_perm = tuple(lb.index(x) for x in batch) + (lb.index(j), lb.index(d))
        return Operand(a, q_perm), Operand(b, k_perm), "einsum"
    raise NotAnOperand(f"{leaf.name} is not a matrix product")


def pv_operand(pv, probs, nb: int) -> tuple[Operand, tuple[int, ...]]:
    """v of the probabilities-times-values product, and the output's order of the canonical
    (batch..., i, e) dims."""
    k = g.kind(pv)
    identity = tuple(range(nb + 2))
    if k == "matmul":
        if pv.args[0] is not probs:
            raise NotAnOperand("the probabilities are the right operand of the value product")
        _same_batch((pv.args[1],), nb, probs)
        return Operand(pv.args[1], identity), identity
    if k == "einsum":
        eq, operands = _einsum_parts(pv)
        letters, lo = _letters(eq)
        if len(operands) != 2 or probs not in operands:
            raise NotAnOperand(f"einsum {eq!r} is not probabilities times values")
        p_index = operands.index(probs)
        lp, lv, v = letters[p_index], letters[1 - p_index], operands[1 - p_index]
        if len(lp) != nb + 2 or len(lv) != nb + 2 or len(lo) != nb + 2:
            raise NotAnOperand(f"einsum {eq!r} does not keep {nb} batch dims")
        batch, i, j = lp[:nb], lp[nb], lp[nb + 1]
        features = [x for x in lv if x not in lp]
        if (j not in lv or j in lo or len(features) != 1 or any(x not in lv or x not in lo for x in batch)
                or i not in lo):
            raise NotAnOperand(f"einsum {eq!r} is not a sum over keys of p times v")
        e = features[0]
        canonical = list(batch) + [i, e]
        v_perm = tuple(lv.index(x) for x in batch) + (lv.index(j), lv.index(e))
        return Operand(v, v_perm), tuple(canonical.index(x) for x in lo)
    raise NotAnOperand(f"the probabilities feed {pv.target}, not a value product")
