"""Which (i, j) positions a mask removes, proved from how the mask was built.

A boolean tensor over the last two dims (rows r, columns c) is described by a predicate on the
diagonal offset d = c - r: `Band("le", e)` holds where d <= e, `Band("ge", e)` where d >= e, with e
a sympy expression in the graph's symbolic sizes; ALL and NONE for constant masks. That covers
tril/triu (with diagonals), arange comparisons, negation, slicing (which shifts d), and registered
buffers, whose values are checked at compile time. Anything else is None: not understood.

A causal mask for M queries at the end of N keys removes exactly d >= P + 1, P = N - M.

Two atoms that are not functions of d extend this, one per mask:
- `SameDocument`, doc[i] == doc[j] for a vector of document ids (packed sequences), read from a
  comparison of a query-side copy of a graph tensor with a key-side copy of the same tensor;
- `KeyFlag`, flag[j]: a boolean graph tensor that varies along the keys (and the leading dims) but
  not along the queries, such as the key-validity mask `valid[:, None, None, :]` of padding.
A mask built from bands and one atom is a `Split`: one band where the atom holds, another where it
does not. Comparing the ids of two different tensors, or with anything but == and !=, and masks
that combine two different atoms, raise MaskDeclined with the reason.
"""
import math
import operator
from dataclasses import dataclass, replace

import sympy
import torch
from torch import fx

from . import graph as g, views


class MaskDeclined(Exception):
    """A mask that must not be rewritten, with the reason (a comparison of document ids that is
    not doc_i == doc_j of one vector, two different atoms in one mask)."""


@dataclass(frozen=True)
class Band:
    side: str          # "le", "ge", "all" or "none"
    bound: sympy.Expr = sympy.Integer(0)

    def negate(self) -> "Band":
        if self.side == "all":
            return NONE
        if self.side == "none":
            return ALL
        if self.side == "le":
            return Band("ge", self.bound + 1)
        return Band("le", self.bound - 1)

    def shift(self, offset) -> "Band":
        """The predicate in coordinates where d_new = d_old - offset."""
        if self.side in ("all", "none"):
            return self
        return Band(self.side, sympy.simplify(self.bound - offset))

    def equals(self, other: "Band") -> bool:
        return self.side == other.side and sympy.simplify(self.bound - other.bound) == 0


ALL = Band("all")
NONE = Band("none")


def _moved_batch(batch: tuple, moves: dict) -> tuple | None:
    """(atom dim, mask dim) pairs after a view that moves the mask dims as `moves` says; None when
    the view drops one of them or moves it off the leading dims (< -2)."""
    moved = tuple((d, moves.get(m)) for d, m in batch)
    return None if any(m is None or m >= -2 for _, m in moved) else moved


@dataclass(frozen=True)
class SameDocument:
    """doc[..., row_start + r] == doc[..., col_start + c] over the rows r and columns c of a mask.
    `doc` is a graph tensor whose dim `seq` runs along the sequence; `batch` pairs each of its
    other dims of size > 1 with the mask dim (counted from the right, < -2) it runs along."""
    doc: fx.Node
    seq: int
    batch: tuple[tuple[int, int], ...]
    row_start: sympy.Expr
    col_start: sympy.Expr

    def same_as(self, other) -> bool:
        return (isinstance(other, SameDocument) and self.doc is other.doc and self.seq == other.seq
                and self.batch == other.batch
                and sympy.simplify(self.row_start - other.row_start) == 0
                and sympy.simplify(self.col_start - other.col_start) == 0)

    def moved(self, moves: dict) -> "SameDocument | None":
        batch = _moved_batch(self.batch, moves)
        return None if batch is None else replace(self, batch=batch)

    def sliced(self, row_start, col_start) -> "SameDocument":
        return replace(self, row_start=self.row_start + row_start,
                       col_start=self.col_start + col_start)


@dataclass(frozen=True)
class KeyFlag:
    """flag[..., start + c] over the columns c of a mask, the same for every row: `flag` is a
    boolean graph tensor whose dim `key` runs along the columns; `batch` pairs each of its other
    dims of size > 1 with the mask dim (counted from the right, < -2) it runs along, in order."""
    flag: fx.Node
    key: int
    batch: tuple[tuple[int, int], ...]
    start: sympy.Expr

    def same_as(self, other) -> bool:
        return (isinstance(other, KeyFlag) and self.flag is other.flag and self.key == other.key
                and self.batch == other.batch and sympy.simplify(self.start - other.start) == 0)

    def moved(self, moves: dict) -> "KeyFlag | None":
        batch = _moved_batch(self.batch, moves)
        return None if batch is None or moves.get(-1) != -1 else replace(self, batch=batch)

    def sliced(self, row_start, col_start) -> "KeyFlag":
        return replace(self, start=self.start + col_start)


Atom = SameDocument | KeyFlag


@dataclass(frozen=True)
class Split:
    """A mask that holds `on` where `atom` holds (the two positions share a document, the key's
    flag is True) and `off` where it does not."""
    atom: Atom
    on: Band
    off: Band

    def negate(self) -> "Split":
        return Split(self.atom, self.on.negate(), self.off.negate())


Mask = Band | Split  # what a boolean mask is read as


def _atoms_differ(a: Atom, b: Atom) -> str:
    """Why one mask cannot hold the two atoms a and b."""
    if isinstance(a, SameDocument) and isinstance(b, SameDocument):
        return (f"masks compare document ids of {g.name(a.doc)} and of {g.name(b.doc)} (or at other "
                "offsets): not one packed-sequence mask")
    if isinstance(a, KeyFlag) and isinstance(b, KeyFlag):
        return (f"masks read two key masks, {g.name(a.flag)} and {g.name(b.flag)} (or one at other "
                "positions): combine them into one boolean tensor before masking")
    docs, keys = (a, b) if isinstance(a, SameDocument) else (b, a)
    return (f"a key mask ({g.name(keys.flag)}) combined with a packed-sequence document mask "
            f"({g.name(docs.doc)}): not supported; drop the key mask (padding lies in its own "
            "document) or mask the keys through the gate")


def _split(op, a, b):
    """op (both or either) of two masks, at least one a Split: the two cases apart."""
    if a is None or b is None:
        return None
    if isinstance(a, Split) and isinstance(b, Split) and not a.atom.same_as(b.atom):
        raise MaskDeclined(_atoms_differ(a.atom, b.atom))
    atom = a.atom if isinstance(a, Split) else b.atom
    a, b = (x if isinstance(x, Split) else Split(atom, x, x) for x in (a, b))
    on, off = op(a.on, b.on), op(a.off, b.off)
    return None if on is None or off is None else Split(atom, on, off)


def both(a: Mask | None, b: Mask | None) -> Mask | None:
    """Logical and."""
    if isinstance(a, Split) or isinstance(b, Split):
        return _split(both, a, b)
    if a is None or b is None:
        return None
    if a.side == "all":
        return b
    if b.side == "all":
        return a
    if "none" in (a.side, b.side):
        return NONE
    if a.side == b.side and a.equals(b):
        return a
    if a.side == b.side:
        diff = sympy.simplify(a.bound - b.bound)
        if diff.is_number:
            smaller = a if diff < 0 else b
            return smaller if a.side == "le" else (b if smaller is a else a)
    return None  # a band (sliding window) or unknown order


def either(a: Mask | None, b: Mask | None) -> Mask | None:
    """Logical or."""
    if isinstance(a, Split) or isinstance(b, Split):
        return _split(either, a, b)
    if a is None or b is None:
        return None
    neither = both(a.negate(), b.negate())
    return None if neither is None else neither.negate()


def _last_two(shape) -> tuple:
    shape = tuple(shape or ())
    return (1,) * (2 - len(shape)) + shape[-2:]


def lift(band: Mask | None, source, target) -> Mask | None:
    """A mask read on a tensor of shape `source`, as it falls on the shape `target` it is
    broadcast to. Unchanged when their last two dims agree. A tensor broadcast along a size-1 row
    or column dim is a function of one index, so its diagonal band (or document atom) does not
    carry over (None), while everywhere / nowhere does, and so does a key flag broadcast along
    the rows."""
    if band is None:
        return None
    rows, cols = (g.same_size(x, y) for x, y in zip(_last_two(source), _last_two(target)))
    return _broadcast(band, rows, cols)


def _broadcast(band: Mask, rows: bool, cols: bool) -> Mask | None:
    """`band` on a tensor broadcast along its rows (unless `rows`) or columns (unless `cols`)."""
    if isinstance(band, Band):
        return band if band.side in ("all", "none") or rows and cols else None
    if not cols or not rows and not isinstance(band.atom, KeyFlag):
        return None
    on, off = _broadcast(band.on, rows, cols), _broadcast(band.off, rows, cols)
    return None if on is None or off is None else Split(band.atom, on, off)


def _within(band: Band, n_queries, n_keys) -> Band:
    """The band as it falls on the scores: d = j - i runs over -(M - 1) .. N - 1, so a band
    beyond either end removes nothing or everything (when sympy can tell)."""
    if band.side in ("all", "none"):
        return band
    low, high = 1 - g.sym(n_queries), g.sym(n_keys) - 1
    if band.side == "ge":
        empty, full = (band.bound - high).is_positive, (band.bound - low).is_nonpositive
    else:
        empty, full = (low - band.bound).is_positive, (band.bound - high).is_nonnegative
    return NONE if empty else (ALL if full else band)


def same_on(a: Band, b: Band, n_queries, n_keys) -> bool:
    """Whether two bands remove the same positions of an M x N score matrix."""
    return _within(a, n_queries, n_keys).equals(_within(b, n_queries, n_keys))


def causal(n_queries, n_keys) -> Band:
    """The positions a causal mask removes: d >= N - M + 1."""
    return Band("ge", sympy.simplify(g.sym(n_keys) - g.sym(n_queries) + 1))


def _buffer_band(tensor: torch.Tensor, truth) -> Band | None:
    """Read a constant 2-D mask buffer: is truth(tensor) exactly one side of a diagonal?"""
    if tensor.dim() < 2 or any(s != 1 for s in tensor.shape[:-2]):
        return None
    held = truth(tensor.reshape(tensor.shape[-2:])).cpu()
    rows = torch.arange(held.shape[0])[:, None]
    cols = torch.arange(held.shape[1])[None, :]
    diag = cols - rows
    if bool(held.all()):
        return ALL
    if not bool(held.any()):
        return NONE
    upper, lower = int(diag[held].max()), int(diag[held].min())
    if torch.equal(held, diag <= upper):
        return Band("le", sympy.Integer(upper))
    if torch.equal(held, diag >= lower):
        return Band("ge", sympy.Integer(lower))
    return None


class MaskReader:
    """Reads boolean masks (and 0/-inf additive masks) built in a graph. `constants` maps
    placeholder nodes of buffers to their real values, when the backend has them."""

    def __init__(self, constants: dict | None = None):
        self.constants = constants or {}
        self.notes: list[str] = []

    def truth(self, node) -> Mask | None:
        """Where a boolean (or 0/1) tensor is true: read from how it was built, else, for a boolean
        tensor that is the same for every row, a key flag."""
        found = self._built(node)
        return found if found is not None else _key_flag(node)

    def _built(self, node) -> Mask | None:
        if isinstance(node, bool):
            return ALL if node else NONE
        k = g.kind(node)
        if k in ("ones", "ones_like"):
            return ALL
        if k in ("zeros", "zeros_like"):
            return NONE
        if k in g.FILLS:
            written = g.fill_value(node)
            fill = float(written) if isinstance(written, bool) else g.number(written)
            return None if fill is None or math.isnan(fill) else (ALL if fill else NONE)
        if k in ("tril", "triu"):
            diagonal = g.arg(node, 1, "diagonal", 0)
            inner = self.truth(node.args[0])
            side = Band("le" if k == "tril" else "ge", g.sym(diagonal))
            return both(inner, side)
        if k == "invert":
            inner = self.truth(node.args[0])
            return None if inner is None else inner.negate()
        if k in ("bool", "cast") and g.dtype(node) == torch.bool and g.floating(node.args[0]):
            found = self.truth(node.args[0])  # a 0 / 1 tensor; else an additive mask's nonzeros
            return found if found is not None else self._additive_compared("lt", node.args[0], -0.0)
        if k == "bool":
            return self.truth(node.args[0])
        if k in ("eq", "ne") and g.number(node.args[1]) == 0.0:
            inner = self.truth(node.args[0])
            return None if inner is None else (inner.negate() if k == "eq" else inner)
        if k in _COMPARE and g.number(node.args[1]) is not None:   # `m == 1`, `m > 0` of 0 / 1
            value = g.stored(g.number(node.args[1]), g.dtype(node.args[0]))   # compared as stored
            found = _where_holds(self.levels(node.args[0]), k, value)
            if found is not None:
                return found
        if k in ("lt", "le", "gt", "ge") and g.floating(node.args[0]) and _is_offset(node.args[1]):
            return self._additive_compared(k, node.args[0], g.number(node.args[1]))
        if k in ("eq", "gt", "ge", "lt", "le", "ne"):
            return self._compare(k, node.args[0], node.args[1])
        if k in ("and", "or") or k == "mul" and all(g.dtype(x) == torch.bool for x in node.args[:2]):
            a, b = (self._lifted(self.truth, x, node) for x in node.args[:2])
            return either(a, b) if k == "or" else both(a, b)
        if k in ("masked_fill", "where", *_ARITHMETIC) and g.floating(node):   # where it is not 0
            return _where_holds(self.levels(node), "ne", 0.0)
        if k == "placeholder" and node in self.constants:
            band = _buffer_band(self.constants[node], lambda t: t.bool())
            if band is not None:
                self.notes.append(f"mask buffer {g.name(node)} checked by value at compile time")
            return band
        return self._viewed(node, self.truth)

    def negative_infinity(self, node, threshold: float) -> Mask | None:
        """Where an additive mask holds a value <= threshold (and 0 elsewhere): read from how it
        was built, else, for one that is the same for every row, on a key flag."""
        found = self._additive(node, threshold)
        return found if found is not None else _additive_key_flag(node, threshold)

    def _additive(self, node, threshold: float) -> Mask | None:
        k = g.kind(node)
        if k in ("tril", "triu", "masked_fill", "where", "cast", *_ARITHMETIC):
            found = self.levels(node)   # two values: `on` where `held` holds, `off` elsewhere
            held, on, off = found if found is not None else (None, None, None)
            if on == 0.0 and off <= threshold or off == 0.0 and on <= threshold:   # NaN: none
                plain = k in ("tril", "triu", "masked_fill", "where") and g.constant(
                    node.args[1 if k == "where" else 0]) is not None   # of a constant, as ever
                if not plain:
                    self.notes.append(f"{g.name(node)} read as an additive mask of 0 and "
                                      f"{min(on, off):g} from how it was built")
                return held.negate() if on == 0.0 else held
            if k != "cast":
                return None
        if k == "placeholder" and node in self.constants:
            t = self.constants[node]
            if not t.is_floating_point():
                return None
            zero_or_masked = ((t == 0) | (t <= threshold)).all()
            band = _buffer_band(t, lambda x: x <= threshold) if bool(zero_or_masked) else None
            if band is not None:
                self.notes.append(f"additive mask buffer {g.name(node)} checked by value at compile time")
            return band
        return self._viewed(node, lambda x: self.negative_infinity(x, threshold))

    def levels(self, node) -> tuple[Mask, float, float] | None:
        """(held, on, off) when node is a tensor of two values built from constants and masks
        alone: `on` where the mask `held` holds, `off` elsewhere; a boolean tensor is 1 / 0.
        Read through casts (values rounded as stored), views that move the values, masked_fill,
        where, tril / triu, and + - * / with constants or with another such tensor on the same
        mask; for the old PyTorch tutorial's `m = (triu(ones(T, T)) == 1).transpose(0, 1);
        m.float().masked_fill(m == 0, -inf).masked_fill(m == 1, 0.0)` and `(1 - tril(ones(T,
        T))) * -1e9`. None for anything else (a NaN value included)."""
        try:
            found = self._levels(node)
        except MaskDeclined:   # read where the mask is used, with its reason
            return None
        if found is None or any(math.isnan(x) for x in found[1:]):
            return None
        return found

    def _levels(self, node):
        value = g.constant(node)
        if value is not None:
            return ALL, value, value
        if not isinstance(node, fx.Node) or not g.is_tensor(node):
            return None
        k = g.kind(node)
        if g.dtype(node) == torch.bool:
            held = self.truth(node)
            return None if held is None else (held, 1.0, 0.0)
        if k == "identity" or k == "cast" and g.floating(node):
            inner = self._levels(node.args[0])
            source = g.dtype(node.args[0])   # None where unknown
            if inner is None or source is None or not (source.is_floating_point
                                                        or source == torch.bool):
                return None   # from integers: values as stored, not followed
            return inner[0], g.stored(inner[1], g.dtype(node)), g.stored(inner[2], g.dtype(node))
        if k in _MOVES or k in views.PERMUTES:   # the values moved: the mask moves with them
            inner = self._levels(node.args[0])
            held = None if inner is None else self._viewed(node, lambda _: inner[0])
            return None if held is None else (held, *inner[1:])
        if k in ("tril", "triu"):   # x where the band holds, 0 elsewhere
            inner = self._levels(node.args[0])
            band = Band("le" if k == "tril" else "ge", g.sym(g.arg(node, 1, "diagonal", 0)))
            return None if inner is None else _filled(inner, band.negate(), 0.0)
        if k == "masked_fill":
            inner, fill = self._levels(node.args[0]), g.constant(g.arg(node, 2, "value"))
            if inner is None or fill is None:
                return None
            return _filled(inner, self.truth_on(node.args[1], node), fill)
        if k == "where":   # where(cond, a, b): a filled with b where cond does not hold
            cond = self.truth_on(node.args[0], node)
            a, b = self._lifted_levels(node.args[1], node), g.constant(node.args[2])
            if a is not None and b is not None and cond is not None:
                return _filled(a, cond.negate(), b)
            a, b = g.constant(node.args[1]), self._lifted_levels(node.args[2], node)
            return None if a is None or b is None else _filled(b, cond, a)
        if k in _ARITHMETIC and g.floating(node) and _plain_arithmetic(node):
            operands = node.args[:1] if k == "neg" else node.args[:2]
            read = []
            for x in operands:
                found = self._lifted_levels(x, node)
                if found is None:
                    return None
                read.append(found)
            return _combined(k, read, g.dtype(node))
        return None

    def _lifted_levels(self, x, into):
        """_levels of x, its mask as it falls on the tensor `into` it is broadcast to."""
        found = self._levels(x)
        if found is None:
            return None
        held = self._lifted(lambda _: found[0], x, into)
        return None if held is None else (held, *found[1:])

    def _viewed(self, node, read) -> Mask | None:
        """What `read` finds on the tensor a view node shows, as it falls on node: through casts
        and copies, expand, slices and new axes (x[None], unsqueeze before the last two dims).
        None for any other node."""
        k = g.kind(node)
        if k in ("cast", "identity"):
            return read(node.args[0])
        if k == "expand":
            return self._lifted(read, node.args[0], node)
        if k == "getitem":
            return self._sliced(node, read)
        if _swaps_last_two(node):   # rows and columns trade places: d -> -d
            return _transposed(read(node.args[0]))
        if _new_leading_axis(node):
            return _moved(read(node.args[0]), node)
        return None

    def _additive_compared(self, op: str, x, c) -> Mask | None:
        """`x < c` (or <=, >, >=) for an additive mask x, 0 except a fill value where it masks, and
        c < 0: exactly where x masks when the fill lies below c (Falcon's `causal_mask < -1` of a
        0 / finfo.min mask); the negation for > and >=. None when c >= 0 or x is no such mask."""
        if c is None or c > 0 or c == 0 and not (op == "lt" and math.copysign(1, c) < 0):
            return None  # -0.0 with "lt": x < 0, the nonzero entries of a 0 / negative mask
        strict = op in ("lt", "ge")  # x < c, and x >= c = not (x < c)
        threshold = math.nextafter(c, -math.inf) if strict else c
        masked = self.negative_infinity(x, threshold)
        if masked is None:
            return None
        return masked if op in ("lt", "le") else masked.negate()

    def truth_on(self, mask, target) -> Mask | None:
        """Where `mask` is true, as it falls on the tensor `target` it masks."""
        return self._lifted(self.truth, mask, target)

    @staticmethod
    def _lifted(read, x, into) -> Mask | None:
        return lift(read(x), g.shape(x), g.shape(into))

    def _sliced(self, node, read) -> Mask | None:
        """x[..., a:, b:] (leading dims indexed or new axes added at will): d shifts by b - a;
        document ids shift by a along the rows and b along the columns."""
        base, index = node.args
        band = read(base)
        if band is None:
            return None
        base_shape = g.shape(base)
        if base_shape is None or len(base_shape) < 2:
            return None
        starts = _last_two_starts(index, base_shape)
        if starts is None:
            return None
        row_start, col_start = starts
        if isinstance(band, Split):
            atom = _moved_atom(band.atom, node)
            if atom is None:
                return None
            return Split(atom.sliced(row_start, col_start), band.on.shift(-(col_start - row_start)),
                         band.off.shift(-(col_start - row_start)))
        return band.shift(-(col_start - row_start))

    def _compare(self, op: str, a, b) -> Mask | None:
        """Comparisons of row and column index tensors, a OP b over (r, c), or of the document ids
        of the rows and of the columns (doc_r == doc_c)."""
        fa, fb = _index_form(a), _index_form(b)
        if fa is None or fb is None:
            if fa is None and fb is None:
                return _document_compare(op, a, b)
            return None
        # (alpha_r * r + alpha_c * c + gamma)  OP  0
        ar, ac, ga = (x - y for x, y in zip(fa, fb))
        if ar == 0 and ac != 0 and all(_last_two(g.shape(x))[0] == 1 for x in (a, b)
                                       if isinstance(x, fx.Node) and g.is_tensor(x)):
            ar = -ac  # one row (r = 0 only, so c = d): a decoding step's `kv <= q_pos`
        if sympy.simplify(ar + ac) != 0 or ac == 0:
            return None
        # ac * (c - r) + ga OP 0  ->  d OP' -ga / ac
        if not ac.is_number:
            return None
        flip = ac < 0
        bound = sympy.simplify(-ga / ac)
        if not bound.is_integer and bound.is_number:
            return None
        ops = {"ge": ("ge", 0), "gt": ("ge", 1), "le": ("le", 0), "lt": ("le", -1)}
        if op not in ops:
            return None
        side, step = ops[op]
        if flip:
            side, step = ("le", -step) if side == "ge" else ("ge", -step)
        return Band(side, sympy.simplify(bound + step))


_MOVES = ("expand", "identity", "unsqueeze", "getitem", "reshape")


def _dim_moves(node) -> dict | None:
    """For a view node (getitem with a basic index, unsqueeze, expand, identity, a reshape that
    only adds or removes size-1 dims) of x: the dims of x, counted from the right, that stay dims
    of node, mapped to their place in node (from the right); dims that an integer index drops (or
    a reshape's size-1 dims) are missing. None for any other node."""
    dims = views.sources(node) if g.kind(node) in _MOVES else None
    if dims is None or views.MERGED in dims:
        return None
    in_rank, out_rank = g.rank(node.args[0]), len(dims)
    return {s - in_rank: o - out_rank for o, s in enumerate(dims) if s != views.NEW}


def _swaps_last_two(node) -> bool:
    """Whether node is a transpose or permute that swaps the last two dims and keeps the rest."""
    dims = views.sources(node) if g.kind(node) in views.PERMUTES else None
    return dims is not None and dims == [*range(len(dims) - 2), len(dims) - 1, len(dims) - 2]


def _transposed(mask: Mask | None) -> Band | None:
    """A band over (r, c) read over (c, r): d <= e becomes d >= -e. An atom does not follow (a key
    flag would run along the rows)."""
    if not isinstance(mask, Band) or mask.side in ("all", "none"):
        return mask if isinstance(mask, Band) else None
    return Band("ge" if mask.side == "le" else "le", sympy.simplify(-mask.bound))


def _same(a: Mask | None, b: Mask | None) -> bool:
    """Whether two masks provably hold at the same positions (as read, not as they fall on a
    particular score matrix)."""
    if isinstance(a, Band) and isinstance(b, Band):
        return a.equals(b)
    return (isinstance(a, Split) and isinstance(b, Split) and a.atom.same_as(b.atom)
            and a.on.equals(b.on) and a.off.equals(b.off))


def constant_of(levels: tuple) -> float | None:
    """The one value of a two-valued tensor (held, on, off) that has only one: its two values
    agree, or its mask holds everywhere or nowhere. None when it has two."""
    held, on, off = levels
    if _same(held, NONE):
        return off
    return on if on == off or _same(held, ALL) else None


def _filled(levels: tuple, cond: Mask | None, fill: float) -> tuple | None:
    """The two-valued tensor `levels` (held, on, off) set to `fill` where `cond` holds, if the
    result still has two values on masks read here."""
    if cond is None:
        return None
    held, on, off = levels
    value = constant_of(levels)
    if value is not None:
        return cond, fill, value
    if _same(cond, held):
        return held, fill, off
    if _same(cond, held.negate()):
        return held, on, fill
    if _same(cond, ALL):
        return ALL, fill, fill
    if _same(cond, NONE):
        return levels
    return None


_ARITHMETIC = ("add", "sub", "mul", "div", "neg")


def _plain_arithmetic(node) -> bool:
    """No `alpha=` on add / sub, no `rounding_mode=` on div."""
    return (g.arg(node, 2, "alpha", 1) == 1 if g.kind(node) in ("add", "sub")
            else g.arg(node, 2, "rounding_mode") is None)


_OPERATORS = {"add": operator.add, "sub": operator.sub, "mul": operator.mul,
              "div": operator.truediv, "neg": operator.neg}


def _combined(k: str, read: list, dtype) -> tuple | None:
    """The levels of k (add, sub, mul, div, neg) of operands whose levels are `read`, each
    (held, on, off) on the result's shape, rounded as `dtype` stores the values; None where
    the two operands' masks are neither the same nor each other's negation."""
    def apply(values):
        try:
            return g.stored(_OPERATORS[k](*values), dtype)
        except ZeroDivisionError:   # torch gives inf or nan: not read here
            return None

    constants = [constant_of(x) for x in read]
    if None not in constants:
        value = apply(constants)
        return None if value is None else (ALL, value, value)
    held = next(x for x, c in zip(read, constants) if c is None)[0]
    on, off = [], []
    for (other, a, b), value in zip(read, constants):
        if value is not None:
            a = b = value
        elif _same(other, held.negate()):
            a, b = b, a
        elif not _same(other, held):
            return None
        on.append(a)
        off.append(b)
    on_value, off_value = apply(on), apply(off)
    return None if None in (on_value, off_value) else (held, on_value, off_value)


_COMPARE = {"eq": lambda a, b: a == b, "ne": lambda a, b: a != b, "lt": lambda a, b: a < b,
            "le": lambda a, b: a <= b, "gt": lambda a, b: a > b, "ge": lambda a, b: a >= b}


def _where_holds(levels: tuple | None, op: str, value: float) -> Mask | None:
    """Where `levels OP value` holds for the two-valued tensor `levels` (None when not read)."""
    if levels is None:
        return None
    held, on, off = levels
    at_on, at_off = (_COMPARE[op](x, value) for x in (on, off))
    if at_on and at_off:
        return ALL
    return held if at_on else (held.negate() if at_off else NONE)


def _new_leading_axis(node) -> bool:
    """Whether node is an unsqueeze that adds a dim before the last two."""
    dims = views.sources(node) if g.kind(node) == "unsqueeze" else None
    return dims is not None and views.NEW not in dims[-2:]


def _moved_atom(atom: Atom, node) -> Atom | None:
    """The atom of node's input as it falls on node (a view of it); None when the view drops or
    moves one of its dims where the atom cannot follow."""
    moves = _dim_moves(node)
    return None if moves is None else atom.moved(moves)


def _moved(mask: Mask | None, node) -> Mask | None:
    """A mask read on node's input, on node (an unsqueeze of a leading dim)."""
    if not isinstance(mask, Split):
        return mask
    atom = _moved_atom(mask.atom, node)
    return None if atom is None else Split(atom, mask.on, mask.off)


def _vector_view(node):
    """node as a view of a graph tensor `base` made only of new size-1 dims, unit-step slices and
    broadcasts: (base, {base dim: (dim of node counted from the right, slice start)}) for the
    dims of base of size > 1; None when node is no such view (or is a number)."""
    if not isinstance(node, fx.Node) or not g.is_tensor(node):
        return None
    moves = _dim_moves(node)
    if moves is None:
        rank = g.rank(node)
        shape = g.shape(node)
        return node, {d: (d - rank, sympy.Integer(0)) for d in range(rank)
                      if not g.same_size(shape[d], 1)}
    inner = _vector_view(node.args[0])
    if inner is None:
        return None
    base, placed = inner
    starts = _slice_starts(node)
    out = {}
    for d, (at, start) in placed.items():
        if moves.get(at) is None or starts is None:
            return None
        out[d] = (moves[at], start + starts.get(at, 0))
    return base, out


def _key_flag(node) -> Split | None:
    """A boolean graph tensor of size 1 along the rows and not along the columns, as the mask
    "flag[j] is True" (a Split on a KeyFlag); None for anything else."""
    if not isinstance(node, fx.Node) or g.dtype(node) != torch.bool:
        return None
    rows, cols = _last_two(g.shape(node))
    view = _vector_view(node) if g.same_size(rows, 1) and not g.same_size(cols, 1) else None
    return None if view is None else _flag_of(*view)


def _flag_of(flag, placed: dict) -> Split | None:
    """The mask "flag is True" for a boolean graph tensor placed along a mask's dims as
    `_vector_view` says; None unless one dim runs along the columns and the others, unsliced,
    along the leading dims."""
    if g.dtype(flag) != torch.bool:
        return None
    keys = [d for d, (at, _) in placed.items() if at == -1]
    batch = tuple((d, at) for d, (at, start) in sorted(placed.items()) if at < -2 and start == 0)
    if len(keys) != 1 or len(batch) + 1 != len(placed):
        return None  # a leading dim sliced: not followed
    return Split(KeyFlag(flag, keys[0], batch, placed[keys[0]][1]), ALL, NONE)


def _filled_where(node, threshold: float) -> tuple[fx.Node, bool] | None:
    """(cond, held) when node is 0 except for a value <= threshold where the boolean `cond` is
    `held`: masked_fill(0, cond, fill), where(cond, fill, 0) or where(cond, 0, fill)."""
    k = g.kind(node)
    if k == "masked_fill":
        fill = g.number(node.args[2])
        ok = g.constant(node.args[0]) == 0.0 and fill is not None and fill <= threshold
        return (node.args[1], True) if ok else None
    if k == "where":
        a, b = g.constant(node.args[1]), g.constant(node.args[2])
        if a == 0.0 and b is not None and b <= threshold:
            return node.args[0], False
        if b == 0.0 and a is not None and a <= threshold:
            return node.args[0], True
    return None


def _additive_key_flag(node, threshold: float) -> Split | None:
    """A floating tensor of size 1 along the rows that is a view of a 0 / <= threshold vector
    `_filled_where` reads, its condition of the same shape: the mask on that condition (with its
    negations peeled off) as a key flag."""
    if not isinstance(node, fx.Node) or not g.floating(node):
        return None
    rows, cols = _last_two(g.shape(node))
    view = _vector_view(node) if g.same_size(rows, 1) and not g.same_size(cols, 1) else None
    found = None if view is None else _filled_where(view[0], threshold)
    if found is None or not g.same_shape(g.shape(found[0]), g.shape(view[0])):
        return None
    cond, held = found
    while g.kind(cond) == "invert":
        cond, held = cond.args[0], not held
    flag = _flag_of(cond, view[1])
    return None if flag is None else (flag if held else flag.negate())


def _slice_starts(node) -> dict | None:
    """Start offsets of a view's slices, by input dim counted from the right ({} for a view that
    slices nothing); None for slices with a step other than 1."""
    if g.kind(node) != "getitem":
        return {}
    x = node.args[0]
    in_rank, shape = g.rank(x), g.shape(x)
    starts = {}
    for entry in g.index_map(node.args[1], in_rank):
        if entry is None:
            continue
        dim, part = entry
        if part.step not in (None, 1):
            return None
        start = g.sym(part.start if part.start is not None else 0)
        starts[dim - in_rank] = g.sym(shape[dim]) + start if start.is_negative else start
    return starts


def _document_compare(op: str, a, b) -> Split | None:
    """doc_r OP doc_c: a query-side copy (varying along the rows) and a key-side copy (along the
    columns) of one graph tensor. == is a Split that holds within documents, != one that holds
    between them; None when a and b are not such copies; MaskDeclined for other comparisons of
    such copies, or copies of two different tensors."""
    va, vb = _vector_view(a), _vector_view(b)
    if va is None or vb is None:
        return None
    sides = []
    for base, placed in (va, vb):
        rows = [d for d, (at, _) in placed.items() if at == -2]
        cols = [d for d, (at, _) in placed.items() if at == -1]
        if len(rows) + len(cols) != 1:
            return None  # not a copy of a vector along one axis
        sides.append((base, placed, "row" if rows else "col", (rows or cols)[0]))
    if {sides[0][2], sides[1][2]} != {"row", "col"}:
        return None
    (row_base, row_placed, _, seq), (col_base, col_placed, _, col_seq) = sorted(
        sides, key=lambda side: side[2] != "row")
    if row_base is not col_base or seq != col_seq:
        raise MaskDeclined(f"compares {g.name(row_base)} along the queries with {g.name(col_base)} "
                           "along the keys: a document mask compares one vector of ids with itself")
    if op not in ("eq", "ne"):
        raise MaskDeclined(f"compares {g.name(row_base)} along the queries and the keys with {op}: of "
                           "such comparisons only equality (document ids, doc_i == doc_j) is "
                           "understood")
    dtype = g.dtype(row_base)
    if dtype is None or dtype.is_floating_point or dtype.is_complex:
        raise MaskDeclined(f"document ids {g.name(row_base)} are {dtype}: only integer ids go to the op")
    batch = []
    for d in row_placed:
        if d == seq:
            continue
        (at, start), other = row_placed[d], col_placed.get(d)
        if other is None or other[0] != at or start != 0 or other[1] != 0:
            return None
        batch.append((d, at))
    docs = SameDocument(row_base, seq, tuple(batch), row_placed[seq][1], col_placed[seq][1])
    return Split(docs, ALL, NONE) if op == "eq" else Split(docs, NONE, ALL)


def _last_two_starts(index, shape: tuple):
    """Start offsets of a basic index along the last two dims, when it keeps them as the last two
    dims with unit steps; else None."""
    dims = g.index_map(index, len(shape))
    if dims is None or len(dims) < 2 or None in dims[-2:]:
        return None
    rank = len(shape)
    if [d for d, _ in dims[-2:]] != [rank - 2, rank - 1]:
        return None
    starts = []
    for (dim, part) in dims[-2:]:
        if part.step not in (None, 1):
            return None
        start = g.value(part.start) if part.start is not None else 0
        if isinstance(start, int) and start < 0:
            start = g.sym(shape[dim]) + start
        starts.append(start if isinstance(start, sympy.Expr) else g.sym(start))
    return starts


def _index_form(node):
    """An index tensor broadcast along the rows (r) or the columns (c) of the last two dims, or a
    sum of such: (alpha_r, alpha_c, gamma) meaning alpha_r * r + alpha_c * c + gamma, or None."""
    if _is_offset(node):
        return (sympy.Integer(0), sympy.Integer(0), _offset_of(node))
    found = _position_vector(node)
    if found is not None:
        axis, offset = found
        one, zero = sympy.Integer(1), sympy.Integer(0)
        if axis == "one":
            return (zero, zero, offset)
        return (one, zero, offset) if axis == "row" else (zero, one, offset)
    k = g.kind(node)
    if k in ("add", "sub") and g.number(node.kwargs.get("alpha", 1)) == 1.0:
        fa, fb = _index_form(node.args[0]), _index_form(node.args[1])
        if fa is None or fb is None:
            return None
        sign = 1 if k == "add" else -1
        return tuple(x + sign * y for x, y in zip(fa, fb))
    return None


# dtypes that hold every position of a realistic sequence exactly (float32: up to 2^24)
_EXACT_POSITIONS = (torch.int32, torch.int64, torch.float32, torch.float64)


def _offset_of(x):
    """A Python number or a size (SymInt, or a graph node holding one) as a sympy expression."""
    if isinstance(x, fx.Node) and isinstance(g.value(x), torch.SymInt):
        return g.sym(g.value(x))
    return g.sym(x) if isinstance(x, torch.SymInt) else sympy.nsimplify(g.number(x))


def _is_offset(x) -> bool:
    """A Python number, a SymInt, or a graph node computing a size (not a tensor)."""
    if isinstance(x, torch.SymInt):
        return True
    if isinstance(x, fx.Node) and isinstance(g.value(x), torch.SymInt):
        return True  # a size handed in (decoding: the cache length as a placeholder)
    return g.number(x) is not None and not (isinstance(x, fx.Node) and g.is_tensor(x))


def _vector_dim(node) -> int | None:
    """The one dim of size > 1 of a tensor (a vector laid along it), else None."""
    shape = g.shape(node)
    if shape is None:
        return None
    dims = [d for d, size in enumerate(shape) if not g.same_size(size, 1)]
    return dims[0] if len(dims) == 1 else None


def _positions(node):
    """For a vector of positions t + offset (t = 0, 1, ... along its one dim of size > 1): the
    offset, read from how it was built: arange with step 1, plus or minus a number or a size
    (Hugging Face's `arange(q_len) + q_offset`), casts, new size-1 axes, reshapes that keep the
    vector, and unit-step slices (a slice from a shifts the offset by a). None for anything else."""
    dim = _vector_dim(node)
    if dim is None:
        return None
    k = g.kind(node)
    if k == "arange":
        start = node.args[0] if len(node.args) > 1 else node.kwargs.get("start", 0)
        step = node.args[2] if len(node.args) > 2 else node.kwargs.get("step", 1)
        return _offset_of(start) if g.number(step) == 1.0 and _is_offset(start) else None
    if k in ("add", "sub"):
        if g.number(node.kwargs.get("alpha", 1)) != 1.0:
            return None
        a, b = node.args[0], node.args[1]
        if _is_offset(b):
            inner = _positions(a)
            return None if inner is None else inner + (1 if k == "add" else -1) * _offset_of(b)
        if k == "add" and _is_offset(a):
            inner = _positions(b)
            return None if inner is None else inner + _offset_of(a)
        return None
    if k in ("cast", "identity", "unsqueeze", "reshape"):
        x = node.args[0]
        in_dim = _vector_dim(x)
        if in_dim is None or not g.same_size(g.shape(x)[in_dim], g.shape(node)[dim]):
            return None
        if k == "cast" and g.dtype(node) not in _EXACT_POSITIONS:
            return None  # int8, float16, bfloat16 ... wrap or round positions; bool is no position
        return _positions(x)
    if k == "getitem":
        x = node.args[0]
        in_dim, rank = _vector_dim(x), g.rank(x)
        dims = g.index_map(node.args[1], rank) if rank is not None else None
        if in_dim is None or dims is None or dims[dim] is None or dims[dim][0] != in_dim:
            return None
        part = dims[dim][1]
        if part.step not in (None, 1):
            return None
        inner = _positions(x)
        start = g.sym(part.start if part.start is not None else 0)
        if start.is_negative:
            start = g.sym(g.shape(x)[in_dim]) + start
        return None if inner is None else inner + start
    return None


def _single_position(node):
    """For a tensor of one element that is a position t + offset at t = 0 (arange of length 1
    plus or minus numbers, viewed): the offset; None otherwise."""
    shape = g.shape(node)
    if shape is None or not all(g.same_size(size, 1) for size in shape):
        return None
    k = g.kind(node)
    if k == "arange":
        start = node.args[0] if len(node.args) > 1 else node.kwargs.get("start", 0)
        return _offset_of(start) if _is_offset(start) else None
    if k in ("add", "sub") and g.number(node.kwargs.get("alpha", 1)) == 1.0:
        a, b = node.args[0], node.args[1]
        if _is_offset(b):
            inner = _single_position(a)
            return None if inner is None else inner + (1 if k == "add" else -1) * _offset_of(b)
        if k == "add" and _is_offset(a):
            inner = _single_position(b)
            return None if inner is None else inner + _offset_of(a)
        return None
    if k in ("cast", "identity", "unsqueeze", "reshape") and not (
            k == "cast" and g.dtype(node) not in _EXACT_POSITIONS):
        return _single_position(node.args[0])
    if k == "getitem":
        parts = node.args[1] if isinstance(node.args[1], tuple) else (node.args[1],)
        plain = all(p is None or p is Ellipsis or p == slice(None) or p == 0 for p in parts)
        return _single_position(node.args[0]) if plain else None
    return None


def _position_vector(node):
    """("row" or "col", offset) for a vector of positions laid along the rows or the columns of
    the last two dims (a 1-D tensor broadcasts along the columns); ("one", offset) for a single
    position (a decoding step's query), which is the same everywhere."""
    dim, shape = _vector_dim(node), g.shape(node)
    if not isinstance(node, fx.Node) or not g.is_tensor(node):
        return None
    if dim is None:
        offset = _single_position(node)
        return None if offset is None else ("one", offset)
    rank = len(shape)
    axis = "col" if dim == rank - 1 else ("row" if dim == rank - 2 else None)
    offset = None if axis is None else _positions(node)
    return None if offset is None else (axis, offset)

