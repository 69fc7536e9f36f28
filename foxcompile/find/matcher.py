"""Find forgetting attention in an FX graph by what it computes.

From every softmax (library call or written by hand) and every SDPA call, the matcher works out
the scores as a function of (batch, head, i, j): a scaled q.k product, key-side terms (the forget
gate: lam_j, an ALiBi slope * j), query-side terms (ignored by softmax), and masks, which must
remove exactly the keys j > i + P (P = N - M). Then it checks that the T x T intermediates belong
to the site alone, that no in-place op changes what it read (inplace.py), and decides from the
graph whether the gate provably decays. The result is a Site to rewrite or a Decline with a reason
a user can act on. docs/matching.md lists the forms and the reasons.
"""
import logging
import math
import operator

import networkx as nx
import sympy
from torch import fx

from ..contract import DECODE_ROWS, MAX_HEAD_DIM, MIN_HEAD_DIM  # CUDA sites outside: declined
from ..contract import query_rows
from . import graph as g
from . import distance
from .dead import dead_nodes
from .decay import decay_verdict, direction, sign
from .inplace import InPlace, targets
from .masks import (ALL, NONE, Band, KeyFlag, MaskDeclined, MaskReader, Split, causal, either, lift,
                    same_on)
from .operands import NotAnOperand, key_value, pv_operand, qk_operands
from .separable import constant_along, segsum
from .site import Decline, Documents, KeyTerm, MaskedKeys, Operand, Site
from .terms import FINITE_MASK_LIMIT, FINITE_MASK_LIMIT_UNDER_BIAS, ScoreWalker, merges_batch

log = logging.getLogger("foxcompile")
_PRODUCTS = ("matmul", "einsum", "baddbmm")
MAX_BATCH_DIMS = 3                    # (B, Hk, G): q split into groups of heads


class Declined(Exception):
    """Raised inside the matcher with the reason a candidate is left alone."""


def _softmax_input(node):
    """(scores node, coefficient, the node reading the scores) if node is a softmax over the last
    dim (library or by hand), else None. exp2-based softmax is softmax of scores * ln 2."""
    k = g.kind(node)
    if k == "softmax":
        scores = node.args[0]
        dim = g.arg(node, 1, "dim")
        if dim is None or g.normalize_dim(dim, g.rank(scores)) != g.rank(scores) - 1:
            raise Declined(f"softmax over dim {dim}, not the last (key) axis")
        return scores, 1.0, node
    if k != "div":
        return None
    num, den = node.args[0], node.args[1]
    if g.kind(num) not in ("exp", "exp2") or g.kind(den) != "sum" or den.args[0] is not num:
        return None
    dim = g.arg(den, 1, "dim")
    dims = dim if isinstance(dim, (tuple, list)) else (dim,)
    if (len(dims) != 1 or dims[0] is None
            or g.normalize_dim(dims[0], g.rank(num)) != g.rank(num) - 1):
        raise Declined("hand-written softmax normalises over a dim other than the last")
    if g.rank(den) != g.rank(num):
        return None  # row sums without keepdim broadcast along the wrong axis: not a softmax
    coef = 1.0 if g.kind(num) == "exp" else math.log(2.0)
    # exp(s - m) with m a row max: m has size 1 along the keys, so the walk drops it like any
    # query-only term
    return num.args[0], coef, num


def _is_nan_repair(node, probs) -> bool:
    """nan_to_num(p), where(isnan(p), 0, p) and masked_fill(isnan(p), 0)."""
    k = g.kind(node)
    if k == "nan_to_num":
        return node.args[0] is probs
    if k == "where":
        cond = node.args[0]
        return (g.kind(cond) == "isnan" and cond.args[0] is probs and node.args[2] is probs
                and g.number(node.args[1]) == 0.0)
    if k == "masked_fill":
        cond = node.args[1]
        return g.kind(cond) == "isnan" and cond.args[0] is probs and node.args[0] is probs
    return False


def _is_nan_repair_in_place(node, probs) -> bool:
    """p[isnan(p)] = 0 (Dynamo records operator.setitem on p): like nan_to_num, a no-op for the
    op, whose rows always hold their diagonal."""
    if not (isinstance(node, fx.Node) and node.target is operator.setitem):
        return False
    p, index, fill = node.args
    return (p is probs and g.kind(index) == "isnan" and index.args[0] is probs
            and g.number(fill) == 0.0)


def _decoding_rows(n_queries, q_heads, kv_heads):
    """M x G, the query rows per kv head of a site, when the shapes fix it at a decoding size
    (contract.DECODE_ROWS or fewer) whatever the symbols; None otherwise."""
    if not all(isinstance(x, int) for x in (n_queries, q_heads, kv_heads)):
        return None
    rows = query_rows(n_queries, q_heads, kv_heads)
    return rows if rows <= DECODE_ROWS else None


def _nan_repairs(pv, probs) -> set:
    """(probs, pv) reads that see only an in-place NaN repair of the probabilities."""
    return {(probs, pv)} if any(_is_nan_repair_in_place(u, probs) for u in probs.users) else set()


def _value_product(softmax_out, dead=frozenset()):
    """Follow the probabilities through casts, inactive dropout and NaN repair to the PV product
    (dead users do not count)."""
    probs, merged = softmax_out, False
    while True:
        users = [u for u in probs.users if not (g.kind(u) == "isnan" and len(u.users) == 1)
                 and not _is_nan_repair_in_place(u, probs) and u not in dead]
        if len(users) != 1:
            raise Declined(f"the probabilities are used {len(users)} times (returned or logged?): "
                           "the rewrite would have to keep them")
        user = users[0]
        k = g.kind(user)
        if k in ("cast", "identity") or _is_nan_repair(user, probs):
            probs = user
            continue
        if k == "dropout":
            p = g.number(g.arg(user, 1, "p", 0.5))
            training = g.arg(user, 2, "training", g.arg(user, 2, "train", True))
            if p == 0.0 or training is False:
                probs = user
                continue
            raise Declined(f"dropout (p={p}) is active on the probabilities: rewritten only in eval "
                           "mode or with p=0")
        if k == "reshape" and not merged and merges_batch(user):
            probs, merged = user, True  # (B, H, M, N) viewed as (B*H, M, N) for a bmm (Bloom)
            continue
        if k in ("matmul", "einsum"):
            return user, probs, merged
        raise Declined(f"the probabilities go through {getattr(user.target, '__name__', user.target)} "
                       "before the value product")


class Matcher:
    """Finds sites in one graph. `constants` maps placeholders of buffers to their values."""

    def __init__(self, graph: fx.Graph, constants: dict | None = None):
        self.graph = graph
        self.constants = constants or {}
        self.inplace = InPlace(graph)
        self.dead = dead_nodes(graph)  # read as if eliminated (dead.py)
        self.flow = nx.DiGraph()  # data flow, with the reads after in-place changes
        for node in graph.nodes:
            self.flow.add_node(node)
            for user in node.users:
                if user not in self.dead:
                    self.flow.add_edge(node, user)
        self.flow.add_edges_from((a, b) for a, b in self.inplace.hidden_edges()
                                 if b not in self.dead)

    def find(self) -> tuple[list[Site], list[Decline]]:
        sites, declined = [], []
        for node in list(self.graph.nodes):
            try:
                site = self._match(node)
            except (Declined, MaskDeclined) as why:
                declined.append(Decline(g.location(node), g.module_path(node), str(why), node.name))
                continue
            except Exception as error:  # never let a matcher bug break a model that runs in eager
                log.warning("matcher error at %s, site left alone: %r", g.location(node), error)
                declined.append(Decline(g.location(node), g.module_path(node),
                                        f"internal matcher error ({error!r}); please report it",
                                        node.name))
                continue
            if site is not None:
                sites.append(site)
        return sites, declined

    def _match(self, node) -> Site | None:
        if g.kind(node) == "sdpa":
            return self._match_sdpa(node)
        found = _softmax_input(node)
        if found is None:
            return None
        scores, coef, reading = found
        if g.rank(scores) is None or g.rank(scores) < 2:
            return None
        nb = g.rank(scores) - 2
        if nb > MAX_BATCH_DIMS:
            raise Declined(f"scores have {nb} batch dims: not supported")
        pv, probs, merged = _value_product(node, self.dead)
        reader = MaskReader(self.constants)
        walker = ScoreWalker(g.rank(scores), reader, self.inplace)
        walker.walk(scores, reading, coef)
        shape = g.shape(scores)
        qk_terms, key_terms, documents, masked_keys, blind = self._classify(
            walker.out, reader, shape[-2], shape[-1], nb, shape[0] if nb else 1)
        if len(qk_terms) != 1:
            raise Declined("no q.k product among the scores" if not qk_terms else
                           f"{len(qk_terms)} q.k products in one softmax")
        qk = qk_terms[0]
        if qk.factors:
            raise Declined("the q.k product has a per-head scale: not supported yet")
        if qk.split != merged:
            raise Declined("the q.k product and the value product do not both work on (B*H, ...) "
                           "views of the (B, H, M, N) scores")
        onb = nb - 1 if merged else nb  # merged: q, k, v as (B*H, T, D), the op's B = B*H
        try:
            q, k, spelling = qk_operands(qk.leaf, onb)
            v, out = pv_operand(pv, probs, onb)
            k, v = key_value(k, v)
        except NotAnOperand as why:
            raise Declined(str(why)) from None
        changes, dead = self._check_owned(qk.leaf, pv)
        site = self._site(spelling, node, q, k, v, out, nb, qk.coef, key_terms, scores, reader.notes,
                          documents, masked_keys)
        if merged:
            if documents is not None:
                raise Declined("packed sequences with (B*H, ...) views of the scores: not supported")
            site.merged = scores
            site.notes.append("q, k, v as (B*H, T, D) views: the op runs B*H sequences of one head")
        q_heads, kv_heads = site.shapes["q"][1], site.shapes["k"][1]
        if not g.same_size(q_heads, kv_heads):
            site.notes.append(f"k and v go to the op with {kv_heads} heads (query head h reads key "
                              f"head h // {q_heads // kv_heads})")
        rows = _decoding_rows(site.shapes["q"][2], q_heads, kv_heads)
        if site.prunable and rows is not None:
            site.notes.append(f"{rows} query {'row' if rows == 1 else 'rows'} per kv head (at most "
                              f"{DECODE_ROWS}: decoding-sized): runs dense unless "
                              "FOXCOMPILE_DECODE_PRUNING=1")
        self._check_in_place(site, walker.reads | _nan_repairs(pv, probs), blind)
        site.changes, site.dead = changes, dead
        return site

    def _match_sdpa(self, node) -> Site | None:
        q, k, v = node.args[:3]
        mask = g.arg(node, 3, "attn_mask")
        dropout = g.number(g.arg(node, 4, "dropout_p", 0.0))
        is_causal = g.arg(node, 5, "is_causal", False)
        if mask is None:
            raise Declined("scaled_dot_product_attention without a float attn_mask has no "
                           "forget-gate bias: " + ("plain causal attention, nothing to prune"
                                                   if is_causal else "no causal mask"))
        if dropout != 0.0:
            raise Declined(f"dropout_p={dropout}: rewritten only without attention dropout")
        if g.dtype(mask) is not None and not g.dtype(mask).is_floating_point:
            raise Declined("boolean attn_mask carries no bias")
        nb = g.rank(q) - 2
        if nb > 2 or nb < 0 or g.rank(k) != nb + 2 or g.rank(v) != nb + 2:
            raise Declined(f"SDPA with {nb} batch dims: not supported")
        gqa = node.kwargs.get("enable_gqa") is True and nb == 2
        shared = nb - 1 if gqa else nb  # enable_gqa: k and v have Hk heads, read as h // G
        if not (g.same_shape(g.shape(k)[:shared], g.shape(q)[:shared])
                and g.same_shape(g.shape(k)[:nb], g.shape(v)[:nb])):
            raise Declined("SDPA with k or v broadcast over batch or heads: not supported")
        scale = g.number(node.kwargs.get("scale"))
        if scale is None and node.kwargs.get("scale") is not None:
            raise Declined("SDPA scale is a tensor")
        if scale is None:
            scale = g.shape(q)[-1] ** -0.5
        reader = MaskReader(self.constants)
        walker = ScoreWalker(nb + 2, reader, self.inplace)
        walker.walk(mask, node)
        qk_terms, key_terms, documents, masked_keys, blind = self._classify(
            walker.out, reader, g.shape(q)[-2], g.shape(k)[-2], nb, g.shape(q)[0] if nb else 1)
        if qk_terms:
            raise Declined("attn_mask contains a q.k product")
        groups = {2: ((0,), (1,), (2,), (3,)), 1: ((0,), (), (1,), (2,)), 0: ((), (), (0,), (1,))}[nb]
        operands = [Operand(x, groups) for x in (q, k, v, node)]
        site = self._site("sdpa", node, *operands, nb, scale, key_terms, None, reader.notes,
                          documents, masked_keys)
        self._check_in_place(site, walker.reads, blind)
        return site

    def _classify(self, scores_info, reader, n_queries, n_keys, nb, batch):
        """Split the terms into q.k products and key-side terms, check the masks are causal (within
        documents, for packed sequences; for the keys a key mask leaves). Returns (qk terms, key
        terms, Documents or None, MaskedKeys or None, the leaves of the terms the softmax is blind
        to)."""
        if scores_info.problem:
            raise Declined(scores_info.problem)
        qk_terms, key_terms, kept, additive, piecewise, blind = [], [], [], [], [], []
        for term in scores_info.terms:
            found = self._term(term, reader, nb, g.same_size(n_queries, n_keys))
            if found is None:
                blind.append(term.leaf)
            if found == "additive" and term.split:
                raise Declined(f"{_describe(term.leaf)} on the (B*H, M, N) scores before their view "
                               "as (B, H, M, N): not read as a mask")
            if found == "additive":
                additive.append(term)
            elif isinstance(found, distance.Piecewise):
                piecewise.append((term, found))
                kept.append(term)
                continue
            elif found == "qk":
                qk_terms.append(term)
            elif found is not None:
                if term.split:
                    found = _split_key(found, term)
                if abs(found.coef) >= -FINITE_MASK_LIMIT:
                    raise Declined(f"{_describe(found.leaf)} enters the scores times "
                                   f"{found.coef:g}: a key mask written as arithmetic (m * -1e9) "
                                   "is not read as a mask, and as a gate it would drown the "
                                   "others in the rounding; mask with masked_fill or where")
                key_terms.append(found)
            if found not in (None, "additive"):
                kept.append(term)
        scores = (n_queries, n_keys)
        bands = []
        for term in additive:
            band = reader.negative_infinity(term.leaf, _mask_limit(kept) / term.coef)
            band = lift(band, g.shape(term.leaf), scores)
            if band is None and g.shape(term.leaf)[-2:-1] in ((), (1,)):  # a constant along the rows
                raise Declined(f"{_describe(term.leaf)} masks keys for every query: not a causal "
                               "mask, and as a gate it would be infinite")
            if band is None:
                raise Declined(f"bias depends on i and j jointly ({_describe(term.leaf)}): "
                               "not a forget gate")
            bands.append(band)
        for index, use in enumerate(scores_info.masks):
            band = lift(use.masked, use.shape, scores)
            if band is None:
                raise Declined(f"mask at {g.location(use.node)} not recognised as a function of "
                               "(i, j), nor as one of the keys alone (built from data that varies "
                               "along the queries, broadcast along the keys, or an unsupported "
                               "construction)")
            outside = [t for t in kept if index not in t.masked_by]
            if not use.fill <= _mask_limit(outside):
                raise Declined(f"mask fills with {use.fill:g}, not -inf or a large negative number"
                               + (" (a bias is added after it)" if outside else ""))
            bands.append(band)
        masked = bands[0] if bands else NONE
        for band in bands[1:]:
            masked = either(masked, band)
            if masked is None:
                raise Declined("the masks together are not one causal mask (a sliding window?)")
        documents = masked_keys = None
        if isinstance(masked, Split) and same_on(masked.on, masked.off, n_queries, n_keys):
            masked = masked.on  # the atom makes no difference
        elif isinstance(masked, Split) and isinstance(masked.atom, KeyFlag):
            masked_keys, masked = _masked_keys(masked, n_queries, n_keys, nb)
        elif isinstance(masked, Split):
            if not same_on(masked.off, ALL, n_queries, n_keys):
                raise Declined(f"the mask comparing document ids {g.name(masked.atom.doc)} keeps some "
                               "pairs of different documents: not a packed-sequence mask")
            documents = _documents(masked.atom, n_queries, n_keys, nb, batch)
            masked = masked.on
        want = causal(n_queries, n_keys)
        if not same_on(masked, want, n_queries, n_keys):
            if not bands:
                raise Declined("no causal mask: the bias would grow into the future")
            raise Declined(f"mask removes {_describe_band(masked)}"
                           + (" within a document" if documents else "")
                           + (" of the keys it keeps" if masked_keys else "")
                           + f", not the causal future {_describe_band(want)}")
        for term, pw in piecewise:  # linear on the visible region: d from -(M - 1) to N - M
            key_terms += _linear_pieces(term, pw, n_queries, n_keys, reader)
        if not key_terms:
            raise Declined("no forget-gate bias: plain causal attention, nothing for ACP to prune")
        return qk_terms, key_terms, documents, masked_keys, blind

    @staticmethod
    def _term(term, reader, nb: int, square: bool):
        """What one term is: "qk", a KeyTerm, "additive" (a candidate additive mask, varying along
        i and j), or None (softmax is blind to it)."""
        shp = g.shape(term.leaf)
        if shp is None or len(shp) > nb + 2:
            raise Declined(f"cannot read the shape of {getattr(term.leaf, 'name', term.leaf)}")
        if not math.isfinite(term.coef):
            raise Declined(f"{_describe(term.leaf)} enters the scores times {term.coef}")
        if g.kind(term.leaf) in _PRODUCTS and len(shp) == nb + 2 - term.split:
            if term.rows_sliced:
                raise Declined(f"the q.k product {_describe(term.leaf)} is sliced before the softmax")
            if term.broadcast:
                raise Declined(f"the q.k product {_describe(term.leaf)} is expanded before the "
                               "softmax: its rows or heads would serve several of the scores'")
            return "qk"  # before looking at its shape: with one query it is (..., 1, N)
        along_i = len(shp) >= 2 and shp[-2] != 1
        if len(shp) < 1 or shp[-1] == 1:
            return None  # query-only and constant terms
        if g.kind(term.leaf) in _PRODUCTS:
            raise Declined("a matrix product enters the scores as a key-only term")
        maskable = term.coef > 0 and not term.factors and not term.rows_sliced
        if not along_i:  # a constant key-only mask is a mask: as a gate it would be infinite
            limit = FINITE_MASK_LIMIT / term.coef if maskable else None
            mask = None if limit is None else reader.negative_infinity(term.leaf, limit)
            return "additive" if mask is not None else KeyTerm(term.coef, term.factors, term.leaf)
        if constant_along(term.leaf, -1) is not None:
            return None  # a copy of a query-side vector
        found = constant_along(term.leaf, -2)
        if found is not None:
            return KeyTerm(term.coef, term.factors, *found)
        found = segsum(term.leaf, reader) if square else None
        if found is not None:  # c_i - c_j: the key side is -c_j
            reader.notes.append(f"{g.name(term.leaf)} read as a segment sum c_i - c_j")
            return KeyTerm(-term.coef, term.factors, *found, cumulative=True)
        pw = distance.read(term.leaf)
        if pw is not None and not term.rows_sliced:
            return pw  # resolved once the masks are known to be causal (_classify)
        if g.kind(term.leaf) == "pad":
            raise Declined(f"{_describe(term.leaf)} pads the bias with constant rows or columns "
                           "(memory or null keys): such a key gets the same bias from every query, "
                           "which no key-side gate lam_i - lam_j gives")
        if maskable:
            return "additive"
        raise Declined(f"bias depends on i and j jointly ({_describe(term.leaf)}): not a forget gate")

    def _check_owned(self, qk_leaf, pv) -> tuple[list[fx.Node], list[fx.Node]]:
        """Every node from the q.k product to the value product must serve this site alone (dead
        nodes aside). Returns the in-place ops among them (they change the site's own tensors)
        and the dead nodes hanging off them (the rewrite erases those too)."""
        owned = (nx.descendants(self.flow, qk_leaf) & nx.ancestors(self.flow, pv)) | {qk_leaf}
        for node in owned:
            for user in self.flow.successors(node):
                if user not in owned and user is not pv:
                    raise Declined(f"the scores/probabilities ({g.name(node)}) are also used by "
                                   f"{g.name(user)} at {g.location(user)}: the rewrite would have to "
                                   "keep them")
        hanging, pending = set(), [u for n in owned for u in n.users if u in self.dead]
        while pending:
            node = pending.pop()
            if node not in hanging:
                hanging.add(node)
                pending.extend(u for u in node.users if u in self.dead)
        return ([node for node in self.graph.nodes if node in owned and targets(node)],
                [node for node in self.graph.nodes if node in hanging])

    def _check_in_place(self, site: Site, resolved: set, blind: list) -> None:
        """Decline when an in-place op could make the values differ from what the matcher read,
        or from what the rewrite reads where it inserts the op. blind: the leaves of the terms
        the softmax is blind to (a row max subtracted by hand, query-only terms); what only
        feeds them may read a tensor after an in-place change: the rewrite drops their values."""
        scope = nx.ancestors(self.flow, site.output) | {site.output}
        resolved = resolved | self._blind_reads(site.output, blind)
        reads = [x.node for x in (site.q, site.k, site.v)]
        reads += [x for t in site.key_terms for x in (t.leaf, *(f for f, _ in t.factors))]
        reads += [x.node for x in (site.documents, site.masked_keys) if x is not None]
        why = self.inplace.problem(scope, resolved, [x for x in reads if isinstance(x, fx.Node)],
                                   site.output, self.constants)
        if why is not None:
            raise Declined(why)

    def _blind_reads(self, output, blind) -> set:
        """(x, c) for every read by a node c that reaches `output` only through the leaves of
        `blind` (c one of them, or feeding only them)."""
        leaves = {x for x in blind if isinstance(x, fx.Node)}
        if not leaves:
            return set()
        rest = self.flow.subgraph(set(self.flow) - leaves)
        reach = nx.ancestors(rest, output) | {output}   # reach the output past every blind leaf
        feeding = set().union(*(nx.ancestors(self.flow, x) for x in leaves))
        return {(x, c) for c in leaves | (feeding - reach) for x in c.all_input_nodes}

    def _site(self, spelling, anchor, q, k, v, out, nb, scale, key_terms, scores, notes,
              documents, masked_keys):
        device = g.value(q.node).device
        # v's head dim may differ from q's: the op pads the narrower side
        for dim in (g.size(q.node, q.groups[3]), g.size(v.node, v.groups[3])):
            if device.type == "cuda" and isinstance(dim, int) and not MIN_HEAD_DIM <= dim <= MAX_HEAD_DIM:
                raise Declined(f"head dim {dim} is outside the kernels' "
                               f"{MIN_HEAD_DIM}..{MAX_HEAD_DIM}")
        directions = []
        for term in key_terms:
            s = 1 if term.coef > 0 else (-1 if term.coef < 0 else 0)
            for factor, _power in term.factors:
                fs = sign(factor)
                s = None if fs is None or s is None else s * fs
            d = sign(term.leaf) if term.cumulative else direction(term.leaf, -3 - term.pick)
            directions.append(None if s is None or d is None else s * d)
        decay = decay_verdict(directions, masked_keys is not None)
        if documents is not None:
            notes = [*notes, f"packed sequences (document mask): document ids {g.name(documents.node)}"]
        if masked_keys is not None:
            notes = [*notes, f"key mask: keys where {g.name(masked_keys.node)} is "
                             f"{masked_keys.removed_when} are masked for every query"]
        shapes = {name: tuple(g.size(x.node, group) for group in x.groups)
                  for name, x in (("q", q), ("k", k), ("v", v))}
        if scores is not None:
            shapes["scores"] = g.shape(scores)
        return Site(kind=spelling, location=g.location(anchor), module=g.module_path(anchor),
                    decay=decay, q=q, k=k, v=v, out=out, batch_dims=nb, scale=float(scale),
                    key_terms=key_terms, shapes=shapes, notes=list(dict.fromkeys(notes)),
                    documents=documents, masked_keys=masked_keys)


def _split_key(found: KeyTerm, term) -> KeyTerm:
    """A key-side term read under the view of (B*H, M, N) as the (B, H, M, N) scores: a leaf of
    three dims whose first is B*H is viewed as (B, H) by the rewrite (KeyTerm.split)."""
    shape = g.shape(found.leaf)
    if len(shape) < 3 or g.same_size(shape[-3], 1):
        return found  # no batch dim: it broadcasts the same way in either view
    if found.factors or len(shape) != 3 or found.pick != -2 or found.cumulative:
        raise Declined(f"{_describe(found.leaf)} on the (B*H, M, N) scores: only a plain key-side "
                       "term of shape (B*H, 1, N) is read there")
    found.split = True
    return found


def _linear_pieces(term, pw, n_queries, n_keys, reader) -> list[KeyTerm]:
    """The key-side terms of a piecewise-linear distance f(a (j - i) + b) on the positions a
    causal mask leaves visible (distance.py), or Declined when it is not linear there."""
    leaf_rows, leaf_cols = g.shape(term.leaf)[-2:]
    if not (g.same_size(leaf_rows, n_queries) and g.same_size(leaf_cols, n_keys)):
        raise Declined(f"{_describe(term.leaf)} is broadcast into the scores: its positions are "
                       "not the scores' own")
    low = 1 - g.sym(n_queries)
    high = g.sym(n_keys) - g.sym(n_queries)
    m = distance.multiplier(pw, low, high)
    if m is None:
        raise Declined(f"bias depends on i and j jointly ({_describe(term.leaf)}): a piecewise "
                       "function of j - i that is not linear on the positions the causal mask "
                       "leaves visible")
    reader.notes.append(f"{g.name(term.leaf)} read as linear in j - i on the visible positions")
    pieces = [KeyTerm(term.coef * m * sign, term.factors, node) for sign, node in pw.columns]
    for piece in pieces:
        if abs(piece.coef) >= -FINITE_MASK_LIMIT:
            raise Declined(f"{_describe(term.leaf)} enters the scores times {piece.coef:g}")
    return [p for p in pieces if p.coef != 0]


def _documents(docs, n_queries, n_keys, nb: int, batch) -> Documents:
    """The op's document ids from a mask's doc[P + i] == doc[j]: doc runs along exactly the N
    keys (no slice of the columns, the queries' rows start at P = N - M) and varies at most along
    the batch (the scores' first dim), not along heads."""
    name = g.name(docs.doc)
    shape = g.shape(docs.doc)
    starts_ok = (sympy.simplify(docs.col_start) == 0
                 and sympy.simplify(docs.row_start - (g.sym(n_keys) - g.sym(n_queries))) == 0)
    if not starts_ok or not g.same_size(shape[docs.seq], n_keys):
        raise Declined(f"document ids {name} are compared at other positions than the queries' "
                       "and the keys' own (a shifted or partial slice)")
    rank = nb + 2
    batch_dims = [d for d, at in docs.batch if at + rank == 0]
    if len(batch_dims) != len(docs.batch) or batch_dims and not g.same_size(shape[batch_dims[0]], batch):
        raise Declined(f"document ids {name} vary along the heads or other dims of the scores, "
                       "not only along the batch")
    return Documents(docs.doc, docs.seq, batch_dims[0] if batch_dims else None)


def _masked_keys(split: Split, n_queries, n_keys, nb: int) -> tuple[MaskedKeys, Band]:
    """The keys a mask on a key flag removes for every query, and the band it removes from the
    other keys. The flag runs along exactly the N keys, its other dims along the scores' batch
    dims in order."""
    flag = split.atom
    name = flag.flag.name
    if same_on(split.off, ALL, n_queries, n_keys):
        removed_when, band = False, split.on
    elif same_on(split.on, ALL, n_queries, n_keys):
        removed_when, band = True, split.off
    else:
        raise Declined(f"the mask on the keys' flags {name} keeps some (i, j) of the keys it masks "
                       "(or masks some of the others): only whole keys can be masked")
    shape = g.shape(flag.flag)
    if sympy.simplify(flag.start) != 0 or not g.same_size(shape[flag.key], n_keys):
        raise Declined(f"the key mask {name} is sliced along the keys: only a mask over exactly "
                       "the N keys is understood")
    places = [at for _, at in flag.batch]
    if places != sorted(places) or any(at < -(nb + 2) for at in places):
        raise Declined(f"the key mask {name} runs along the scores' batch dims out of order")
    return MaskedKeys(flag.flag, flag.key, flag.batch, removed_when), band


def _mask_limit(terms) -> float:
    """How negative a finite mask value must be, as the softmax sees it, to count as -inf: below
    FINITE_MASK_LIMIT, and when terms are added after the mask, below FINITE_MASK_LIMIT_UNDER_BIAS
    in their units (a term scaled by c lifts the mask by c times its value). A term with a
    per-head factor counts as scaled by at least 1."""
    if not terms:
        return FINITE_MASK_LIMIT
    scale = max(abs(t.coef) if not t.factors else max(abs(t.coef), 1.0) for t in terms)
    return min(FINITE_MASK_LIMIT, FINITE_MASK_LIMIT_UNDER_BIAS * scale * (1 - 1e-9))


def _describe(node) -> str:
    if not isinstance(node, fx.Node):
        return repr(node)
    return f"{g.name(node)} = {getattr(node.target, '__name__', node.target)}(...)"


def _describe_band(band: Band) -> str:
    if band.side == "all":
        return "every position"
    if band.side == "none":
        return "nothing"
    rel = ">=" if band.side == "ge" else "<="
    return f"keys j with j - i {rel} {band.bound}"
