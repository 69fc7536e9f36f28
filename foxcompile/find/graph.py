"""Reading Dynamo's torch-level FX graphs: one spelling per operation.

Dynamo records `a @ b`, `torch.matmul(a, b)` and `a.matmul(b)` as different nodes; `kind(node)`
names them all "matmul", so the matcher reasons about operations, not spellings. `arg(node, i,
name)` reads an argument the same way whether it was passed by position or keyword (for methods
the tensor itself is argument 0), and `sequence_arg` a list argument (`permute(0, 1)`,
`permute((0, 1))`, `permute(dims=(0, 1))`).
"""
import builtins
import operator
import re

import sympy
import torch
import torch.nn.functional as F
from torch import fx

_FUNCTIONS = {
    operator.add: "add", operator.iadd: "add", torch.add: "add",
    operator.sub: "sub", operator.isub: "sub", torch.sub: "sub", torch.subtract: "sub",
    operator.mul: "mul", operator.imul: "mul", torch.mul: "mul", torch.multiply: "mul",
    operator.truediv: "div", operator.itruediv: "div", torch.div: "div", torch.true_divide: "div",
    operator.neg: "neg", torch.neg: "neg", torch.negative: "neg",
    operator.matmul: "matmul", torch.matmul: "matmul", torch.bmm: "matmul",
    torch.baddbmm: "baddbmm", torch.einsum: "einsum", torch.functional.einsum: "einsum",
    torch.softmax: "softmax", F.softmax: "softmax", torch._C._nn.scaled_dot_product_attention: "sdpa",
    F.scaled_dot_product_attention: "sdpa",
    operator.getitem: "getitem", operator.invert: "invert", torch.logical_not: "invert",
    operator.and_: "and", torch.logical_and: "and", torch.bitwise_and: "and",
    operator.or_: "or", torch.logical_or: "or", torch.bitwise_or: "or",
    operator.ge: "ge", operator.gt: "gt", operator.le: "le", operator.lt: "lt",
    operator.eq: "eq", operator.ne: "ne", torch.ge: "ge", torch.gt: "gt", torch.le: "le",
    torch.lt: "lt", torch.eq: "eq", torch.ne: "ne",
    torch.where: "where", torch.tril: "tril", torch.triu: "triu", torch.ones: "ones",
    torch.zeros: "zeros", torch.full: "full", torch.ones_like: "ones_like",
    torch.zeros_like: "zeros_like", torch.full_like: "full_like", torch.arange: "arange",
    torch.cumsum: "cumsum", torch.cat: "cat", torch.concat: "cat", torch.concatenate: "cat",
    torch._C._nn.log_sigmoid: "logsigmoid", F.logsigmoid: "logsigmoid",
    F.softplus: "softplus", torch._C._nn.softplus: "softplus", torch.sigmoid: "sigmoid",
    F.sigmoid: "sigmoid", torch.exp: "exp", torch.exp2: "exp2", torch.abs: "abs",
    torch.clamp: "clamp", torch.clip: "clamp", torch.relu: "relu", F.relu: "relu",
    torch.amax: "amax", torch.max: "max", torch.sum: "sum", torch.transpose: "transpose",
    torch.permute: "permute", torch.unsqueeze: "unsqueeze", torch.squeeze: "squeeze",
    torch.nan_to_num: "nan_to_num", torch.isnan: "isnan", F.dropout: "dropout",
    torch.dropout: "dropout", torch.repeat_interleave: "repeat_interleave",
    torch.minimum: "minimum", torch.square: "square", torch.log: "log",
    torch.masked_fill: "masked_fill", torch.reshape: "reshape", torch.flatten: "flatten",
    operator.setitem: "setitem", builtins.getattr: "getattr",
    torch._C._nn.pad: "pad", F.pad: "pad", torch.tensor: "tensor", torch.fill: "fill",
}

_METHODS = {
    "add": "add", "add_": "add", "__add__": "add", "sub": "sub", "sub_": "sub", "mul": "mul",
    "mul_": "mul", "div": "div", "div_": "div", "neg": "neg", "matmul": "matmul", "bmm": "matmul",
    "baddbmm": "baddbmm", "softmax": "softmax", "masked_fill": "masked_fill",
    "masked_fill_": "masked_fill", "float": "cast", "to": "cast", "type_as": "cast", "half": "cast",
    "bfloat16": "cast", "double": "cast", "type": "cast", "contiguous": "identity",
    "clone": "identity", "detach": "identity", "transpose": "transpose", "permute": "permute",
    "unsqueeze": "unsqueeze", "squeeze": "squeeze", "view": "reshape", "reshape": "reshape",
    "flatten": "flatten", "expand": "expand", "expand_as": "expand",
    "repeat_interleave": "repeat_interleave", "tril": "tril", "triu": "triu", "cumsum": "cumsum",
    "exp": "exp", "exp2": "exp2", "amax": "amax", "max": "max", "sum": "sum", "bool": "bool",
    "logical_not": "invert", "logical_and": "and", "logical_or": "or", "__invert__": "invert",
    "ge": "ge", "gt": "gt", "le": "le", "lt": "lt", "eq": "eq", "ne": "ne",
    "sigmoid": "sigmoid", "abs": "abs", "clamp": "clamp", "clip": "clamp", "clamp_max": "clamp_max",
    "clamp_min": "clamp_min", "relu": "relu", "nan_to_num": "nan_to_num", "isnan": "isnan",
    "where": "where", "square": "square", "log": "log", "exp_": "exp", "tril_": "tril",
    "triu_": "triu", "repeat": "repeat", "new_ones": "ones_like", "new_zeros": "zeros_like",
    "new_full": "new_full", "fill_": "fill",
}


def kind(node) -> str | None:
    """The operation a node performs, independent of its spelling; None for anything else."""
    if not isinstance(node, fx.Node):
        return None
    if node.op == "call_function":
        name = _FUNCTIONS.get(node.target)
        if name == "getattr":
            return "attr:" + str(node.args[1])
        return name
    if node.op == "call_method":
        return _METHODS.get(node.target)
    return node.op  # placeholder, get_attr, output, call_module


def arg(node: fx.Node, index: int, name: str | None = None, default=None):
    """An argument by position or keyword: node.args[index], else node.kwargs[name], else
    default."""
    if index < len(node.args):
        return node.args[index]
    if name is not None and name in node.kwargs:
        return node.kwargs[name]
    return default


def sequence_arg(node: fx.Node, index: int, name: str | None = None) -> tuple:
    """A list argument (permute's dims, repeat's repeats, einsum's operands) as a tuple, however
    it was written: as separate arguments from position `index` on (`x.permute(0, 2, 1, 3)`), as
    one sequence there (`x.permute((0, 2, 1, 3))`, a list, a torch.Size), or by keyword `name`
    (`x.permute(dims=...)`). () when absent."""
    rest = node.args[index:]
    if len(rest) == 1 and isinstance(rest[0], (tuple, list)):
        return tuple(rest[0])
    if rest or name is None or node.kwargs.get(name) is None:
        return tuple(rest)
    given = node.kwargs[name]
    return tuple(given) if isinstance(given, (tuple, list)) else (given,)


def value(node):
    """The example (fake) tensor Dynamo recorded for a node, or the Python value itself."""
    if isinstance(node, fx.Node):
        return node.meta.get("example_value", node.meta.get("val"))
    return node


def shape(node) -> tuple | None:
    """The shape of the tensor a node holds (sizes may be SymInts), None for anything else."""
    v = value(node)
    return tuple(v.shape) if isinstance(v, torch.Tensor) else None


def rank(node) -> int | None:
    """The number of dims of the tensor a node holds, None for anything else."""
    s = shape(node)
    return None if s is None else len(s)


def dtype(node):
    """The dtype of the tensor a node holds, None for anything else."""
    v = value(node)
    return v.dtype if isinstance(v, torch.Tensor) else None


def floating(node) -> bool:
    """Whether a node holds a floating-point tensor."""
    return dtype(node) is not None and dtype(node).is_floating_point


def is_tensor(node) -> bool:
    """Whether a node holds a tensor."""
    return isinstance(value(node), torch.Tensor)


def number(x) -> float | None:
    """A Python number (Dynamo folds constants such as 1 / sqrt(d) into the graph), else None."""
    if isinstance(x, bool):
        return None
    if isinstance(x, (int, float)):
        return float(x)
    if isinstance(x, (torch.SymInt, torch.SymFloat)):
        try:
            return float(x)  # specialises the symbol: the shape env records a guard
        except Exception:  # an unbacked or unhinted symbol
            return None
    if isinstance(x, fx.Node) and x.op == "call_function":  # a size computed in the graph
        held = value(x)
        if isinstance(held, (int, float, torch.SymInt, torch.SymFloat)) and not isinstance(held, bool):
            return number(held)
    return None


# Tensors that hold one value everywhere, and where that value sits among their arguments:
# torch.full(size, v), torch.full_like(x, v), x.new_full(size, v), x.fill_(v) and torch.fill(x, v).
FILLS = {"full": (1, "fill_value"), "full_like": (1, "fill_value"),
         "new_full": (2, "fill_value"), "fill": (1, "value")}


def fill_value(node):
    """The value a tensor of a kind in FILLS holds everywhere, as written (a number, a bool, a
    SymFloat or a tensor); None for any other node."""
    place = FILLS.get(kind(node))
    return None if place is None else arg(node, *place)


def constant(x) -> float | None:
    """The value of a Python number or of an all-constant tensor (the FILLS kinds, zeros, ones and
    their _like forms, a 0-d torch.tensor(number), possibly cast to another floating dtype, and
    products, quotients and negations of those: `torch.ones(T, T) * -inf`), else None."""
    num = number(x)
    if num is not None:
        return num
    k = kind(x)
    if k in FILLS:
        return number(fill_value(x))
    if k in ("zeros", "zeros_like"):
        return 0.0
    if k in ("ones", "ones_like"):
        return 1.0
    if k == "tensor" and not isinstance(arg(x, 0, "data"), bool):  # torch.tensor(-inf): 0-d
        return number(arg(x, 0, "data"))
    if k == "identity" or (k == "cast" and floating(x) and floating(x.args[0])):
        inner = constant(x.args[0])
        return None if inner is None else stored(inner, dtype(x))
    if k in ("mul", "div", "neg") and floating(x) and arg(x, 2, "rounding_mode") is None:
        operands = [constant(a) for a in x.args[:1 if k == "neg" else 2]]
        if None in operands:
            return None
        if k == "neg":
            return -operands[0]
        a, b = operands
        try:
            folded = a * b if k == "mul" else a / b
        except ZeroDivisionError:  # torch's x / 0 is inf or nan: not folded here
            return None
        return stored(folded, dtype(x))
    return None


def stored(number: float, dtype) -> float:
    """number as a tensor of `dtype` holds it: rounded, or overflowed to inf (bool and integer
    dtypes, which would truncate or wrap, read in the default float dtype, as type promotion
    of a Python float with such a tensor computes)."""
    if dtype is None or not dtype.is_floating_point:
        dtype = torch.get_default_dtype()
    return float(torch.tensor(number, dtype=dtype))


def sym(x) -> sympy.Expr:
    """A size (int, SymInt, or a graph node computing one) as a sympy expression, so sizes can be
    compared symbolically."""
    if isinstance(x, fx.Node):
        x = value(x)
    if isinstance(x, torch.SymInt):
        return x.node.expr
    if isinstance(x, sympy.Basic):
        return x
    return sympy.Integer(int(x))


def same_size(a, b) -> bool:
    """Whether two sizes are provably equal (symbolically, for dynamic shapes)."""
    return sympy.simplify(sym(a) - sym(b)) == 0


def same_shape(a, b) -> bool:
    """Whether two shapes are known and provably equal, dim by dim."""
    return a is not None and b is not None and len(a) == len(b) and all(map(same_size, a, b))


def numel(sizes) -> sympy.Expr:
    """The product of sizes, as a sympy expression."""
    return sympy.Mul(*(sym(s) for s in sizes))


def size(node, dims=None):
    """The size of a node's dim `dims` (an int) or of several dims merged into one (a sequence;
    none, or dims=None: 1): the recorded size for one dim, an int or a sympy expression for a
    merge."""
    if dims is None:
        return 1
    if isinstance(dims, int):
        return shape(node)[dims]
    sizes = [shape(node)[d] for d in dims]
    if len(sizes) == 1:
        return sizes[0]
    total = numel(sizes)
    return int(total) if total.is_number else total


def index_map(index, in_rank: int) -> list | None:
    """The dims of x[index] for a basic index (ints, slices, None, at most one Ellipsis): one entry
    per output dim, (input dim, slice) or None for a new axis; None for advanced indexing."""
    index = index if isinstance(index, tuple) else (index,)
    basic = (int, slice, torch.SymInt)
    if (index.count(Ellipsis) > 1 or any(isinstance(p, bool) for p in index)
            or not all(p is None or p is Ellipsis or isinstance(p, basic) for p in index)):
        return None
    missing = in_rank - sum(1 for p in index if p is not None and p is not Ellipsis)
    if missing < 0:
        return None
    if Ellipsis in index:
        pos = index.index(Ellipsis)
        index = index[:pos] + (slice(None),) * missing + index[pos + 1:]
    else:
        index = index + (slice(None),) * missing
    dims, in_dim = [], 0
    for part in index:
        if part is None:
            dims.append(None)
            continue
        if isinstance(part, slice):
            dims.append((in_dim, part))
        in_dim += 1
    return dims


def location(node: fx.Node) -> str:
    """The user's source line for a node ("file.py:42 in forward"), from Dynamo's stack trace."""
    trace = node.meta.get("stack_trace") or ""
    lines = [line.strip() for line in trace.strip().splitlines() if line.strip().startswith("File ")]
    if not lines:
        return f"<graph node {name(node)}>"
    last = lines[-1]  # 'File "/path/model.py", line 42, in forward'
    try:
        path = last.split('"')[1]
        line_no = last.split("line ")[1].split(",")[0]
        func = last.rsplit(" in ", 1)[1]
        return f"{path.rsplit('/', 1)[-1]}:{line_no} in {func}"
    except IndexError:
        return last


def user_path(source: str) -> str:
    """A Dynamo source name as the user would write it: "L['self']._modules['layers']._modules
    ['0']._buffers['causal']" -> "layers.0.causal", "L['args'][0].h.0" -> "args.0.h.0"
    (the compiled module itself, self, is left out)."""
    path = re.sub(r"\._(?:modules|buffers|parameters)\['([^']*)'\]", r".\1", source)
    path = re.sub(r"\[\'([^']*)\'\]|\[(\d+)\]", lambda m: "." + (m.group(1) or m.group(2)), path)
    path = re.sub(r"^[LG]\.", "", path)
    return re.sub(r"^self(\.|$)", "", path).strip(".")


def module_path(node: fx.Node) -> str:
    """The nn.Module path the node was traced in ("layers.3.attn"), or ""."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    return user_path(list(stack.values())[-1][0])


def name(node) -> str:
    """What to call a node in a message: an input by the user's own path ("layers.0.causal"
    for a module buffer, "x" for an argument), any other node by its graph name."""
    if not isinstance(node, fx.Node):
        return repr(node)
    grapharg = node.meta.get("grapharg") if node.op == "placeholder" else None
    source = getattr(getattr(grapharg, "source", None), "name", None)
    if callable(source):
        source = source()
    return user_path(source) if isinstance(source, str) and user_path(source) else node.name


def normalize_dim(dim: int, ndim: int) -> int:
    """A dim counted from the left (0..ndim-1), given either way."""
    return dim + ndim if dim < 0 else dim
