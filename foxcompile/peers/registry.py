"""Registering the polyfills with Dynamo: `torch.compiler.substitute_in_graph`, lazily.

Why substitute_in_graph: Dynamo builds the variable for a function it meets (a global, an
attribute, a closure cell) in VariableBuilder._wrap, which looks up the function's id in the
dispatch map that substitute_in_graph fills *before* any other rule, in particular before the
`_torchdynamo_disable` check that turns a torch.compiler.disable'd function into a graph break
(torch 2.13: torch/_dynamo/variables/builder.py, `_id_dispatch` ahead of `is_function_or_wrapper`;
torch/_dynamo/decorators.py, substitute_in_graph). So the polyfill is traced in place of the
peer's function whether or not the peer disabled it, and nothing changes outside Dynamo: eager
calls run the peer's own function (substitute_in_graph only affects tracing).

The polyfill decides at trace time (trace.call_site) whether the frame is being compiled for a
foxcompile backend. If not, it calls `passthrough`: a copy of the peer's function that Dynamo
treats exactly as it treated the original (the same code inlined, or, for a disabled function,
a fresh torch.compiler.disable wrapper of the same callable, which breaks the graph as before),
so Inductor and every other backend get the graphs they got without foxcompile. Calling the
original object itself from the polyfill would loop back into the polyfill.

Registration is lazy and never imports a peer: `install()` registers every peer module already
in sys.modules and puts a small finder on sys.meta_path that registers them again right after
each import of their modules (it wraps only those modules' loaders; any other import costs one
dict lookup). substitute_in_graph's signature check keeps a peer version whose signature
differs from the one the polyfill knows from being intercepted (logged, left alone).
"""
import importlib.abc
import inspect
import logging
import sys
import threading
import types
from dataclasses import dataclass
from typing import Callable

import torch

from . import fla, fox_authors

log = logging.getLogger("foxcompile")


@dataclass(frozen=True)
class Peer:
    module: str                       # where the function is defined
    name: str                         # its attribute there
    kind: str                         # how reports name its calls
    make_polyfill: Callable           # passthrough -> the function Dynamo traces instead


PEERS = (
    Peer(fla.MODULE, fla.NAME, fla.KIND, fla.make_polyfill),
    Peer(fox_authors.MODULE, fox_authors.NAME, fox_authors.KIND, fox_authors.make_polyfill),
)

_lock = threading.RLock()
_status: dict[str, str] = {}        # "module.name" -> "registered" or why not
_registered_ids: dict[int, object] = {}   # id -> the function (kept alive: ids are the keys)


def status() -> dict[str, str]:
    """For each peer function that was found: "registered", or why it is left alone."""
    with _lock:
        return dict(_status)


def passthrough(fn):
    """A callable that behaves like fn in eager and that Dynamo treats as it treated fn, but is
    a different object (so the polyfill can call it without being substituted again)."""
    if getattr(fn, "_torchdynamo_disable", False):
        inner = getattr(fn, "_torchdynamo_orig_callable", None) or inspect.unwrap(fn)
        recursive = getattr(fn, "_torchdynamo_disable_recursive", True)
        return torch._dynamo.disable(inner, recursive=recursive,
                                     reason=getattr(fn, "_torchdynamo_disable_msg", None))
    if isinstance(fn, types.FunctionType):
        copy = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__,
                                  fn.__closure__)
        copy.__kwdefaults__ = fn.__kwdefaults__
        copy.__dict__.update(fn.__dict__)
        copy.__qualname__, copy.__module__, copy.__doc__ = fn.__qualname__, fn.__module__, fn.__doc__
        return copy
    return None


def _register(peer: Peer, fn) -> str:
    if id(fn) in _registered_ids:
        return "registered"
    through = passthrough(fn)
    if through is None:
        return f"not a Python function ({type(fn).__name__}): left alone"
    try:
        polyfill = peer.make_polyfill(through)
        torch.compiler.substitute_in_graph(fn)(polyfill)
    except Exception as error:   # another signature, registered by someone else, another torch
        log.warning("foxcompile: %s.%s is left alone under torch.compile: %s", peer.module,
                    peer.name, error)
        return f"left alone: {error}"
    _registered_ids[id(fn)] = fn
    log.debug("foxcompile: calls of %s.%s go to fox_acp under torch.compile", peer.module, peer.name)
    return "registered"


def _register_loaded(peer: Peer) -> bool:
    """Register peer if its module is imported; True once it is settled (registered or not)."""
    module = sys.modules.get(peer.module)
    if module is None:
        return False
    fn = getattr(module, peer.name, None)
    key = f"{peer.module}.{peer.name}"
    with _lock:
        if fn is None:
            _status[key] = "module has no such function: left alone"
        else:
            _status[key] = _register(peer, fn)
    return True


class _Loader(importlib.abc.Loader):
    """A peer module's own loader, and registration right after the module is executed."""

    def __init__(self, loader, peers):
        self._loader, self._peers = loader, peers

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        for peer in self._peers:
            try:
                _register_loaded(peer)
            except Exception as error:  # never break the peer's import
                log.warning("foxcompile: could not register %s.%s: %r", peer.module, peer.name,
                            error)

    def __getattr__(self, name):   # get_source, get_resource_reader, is_package, ...
        return getattr(self._loader, name)


class _Finder(importlib.abc.MetaPathFinder):
    """Watches the imports of the peer modules; answers None for every other name."""

    def __init__(self):
        self.watched: dict[str, list[Peer]] = {}

    def find_spec(self, fullname, path=None, target=None):
        peers = self.watched.get(fullname)
        if not peers:
            return None
        for finder in sys.meta_path:   # the spec the other finders give, as the import system would
            find = getattr(finder, "find_spec", None) if finder is not self else None
            if find is None:
                continue
            try:
                spec = find(fullname, path, target)
            except Exception:
                return None
            if spec is not None:
                break
        else:
            return None
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        if not isinstance(spec.loader, _Loader):
            spec.loader = _Loader(spec.loader, peers)
        return spec


_finder = _Finder()


def install() -> None:
    """Register the peers already imported, and watch the imports of their modules (a module
    imported, or imported again, later registers then). Idempotent and cheap: imports nothing."""
    with _lock:
        for peer in PEERS:
            _register_loaded(peer)
            watched = _finder.watched.setdefault(peer.module, [])
            if peer not in watched:
                watched.append(peer)
        if _finder not in sys.meta_path:
            sys.meta_path.insert(0, _finder)
