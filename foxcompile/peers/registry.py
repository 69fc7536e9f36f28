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
in sys.modules and puts a small finder on sys.meta_path that registers the others right after
they are imported (the finder wraps only those modules' loaders, and removes itself once every
peer is registered). substitute_in_graph's signature check keeps a peer version whose signature
differs from the one the polyfill knows from being intercepted (logged, left alone).
"""
import importlib.abc
import importlib.util
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
    except (TypeError, ValueError) as error:   # another signature, or registered by someone else
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
        _finder.forget(self._peers)

    def __getattr__(self, name):   # get_source, get_resource_reader, is_package, ...
        return getattr(self._loader, name)


class _Finder(importlib.abc.MetaPathFinder):
    """Watches the imports of the peer modules not yet imported; nothing else."""

    def __init__(self):
        self.waiting: dict[str, list[Peer]] = {}
        self._busy = threading.local()

    def find_spec(self, fullname, path=None, target=None):
        peers = self.waiting.get(fullname)
        busy = getattr(self._busy, "names", None)
        if not peers or (busy and fullname in busy):
            return None
        self._busy.names = (busy or set()) | {fullname}
        try:
            spec = importlib.util.find_spec(fullname)   # the finders after this one
        except Exception:
            return None
        finally:
            self._busy.names = busy
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return None
        spec.loader = _Loader(spec.loader, peers)
        return spec

    def forget(self, peers) -> None:
        with _lock:
            for peer in peers:
                waiting = self.waiting.get(peer.module, [])
                if peer in waiting:
                    waiting.remove(peer)
                if not waiting:
                    self.waiting.pop(peer.module, None)
            if not self.waiting and self in sys.meta_path:
                sys.meta_path.remove(self)


_finder = _Finder()


def install() -> None:
    """Register the peers already imported; watch for the others. Idempotent and cheap: it
    imports nothing."""
    with _lock:
        for peer in PEERS:
            if not _register_loaded(peer):
                waiting = _finder.waiting.setdefault(peer.module, [])
                if peer not in waiting:
                    waiting.append(peer)
            else:
                _finder.forget([peer])
        if _finder.waiting and _finder not in sys.meta_path:
            sys.meta_path.insert(0, _finder)
