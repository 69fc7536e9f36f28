"""fox_acp: the torch.compile backend. Thin glue: find sites, rewrite them, log what happened,
hand the graph to Inductor (or to "fox.compiler")."""
import itertools
import logging
import os
import re

import torch
from torch import fx

from . import ddp, peers
from .find.site import Decline
from .options import FoxOptions
from .report import GraphReport

log = logging.getLogger("foxcompile")
_dump_counter = itertools.count()


def _buffer_constants(gm: fx.GraphModule, example_inputs) -> dict:
    """For gm and each nested GraphModule: placeholders that carry module buffers, with their
    real values (the matcher reads mask buffers). A higher-order op (checkpoint, ...) passes
    buffers on to its body's placeholders."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    constants = {gm: {}}
    for node, example in zip(placeholders, example_inputs):
        if ("_buffers_" in node.name and isinstance(example, torch.Tensor)
                and not isinstance(example, torch._subclasses.FakeTensor)):
            constants[gm][node] = example
    for module in gm.modules():  # parents come before their bodies
        known = constants.get(module, {})
        if not isinstance(module, fx.GraphModule) or not known:
            continue
        for node in module.graph.nodes:
            for position, body_ref in enumerate(node.args):
                body = getattr(module, body_ref.target, None) if (
                    isinstance(body_ref, fx.Node) and body_ref.op == "get_attr") else None
                if not isinstance(body, fx.GraphModule):
                    continue
                inner = [n for n in body.graph.nodes if n.op == "placeholder"]
                passed = node.args[position + 1:]
                constants.setdefault(body, {}).update(
                    {p: known[a] for p, a in zip(inner, passed) if isinstance(a, fx.Node) and a in known})
    return constants


def rewrite_graphs(gm: fx.GraphModule, example_inputs, options: FoxOptions) -> list[GraphReport]:
    """Find and rewrite forgetting attention in gm and every nested GraphModule (checkpoint
    bodies and other higher-order-op subgraphs)."""
    from .find import Matcher
    from .find.einx_ops import lower
    from .rewrite import rewrite

    constants = _buffer_constants(gm, example_inputs)
    reports = []
    for name, module in list(gm.named_modules()):
        if not isinstance(module, fx.GraphModule):
            continue
        before = module.code
        if lower(module.graph):  # einx calls as the torch ops they stand for (find/einx_ops.py)
            module.recompile()
        found, declined = Matcher(module.graph, constants.get(module)).find()
        sites, replaced = [], {}
        for site in found:
            try:
                rewrite(module, site, options.epsilon, replaced)
            except Exception as error:  # a model that runs in eager must still compile
                log.warning("rewrite error at %s, site left alone: %r", site.location, error)
                declined.append(Decline(site.location, site.module,
                                        f"internal rewrite error ({error!r}); please report it"))
                continue
            sites.append(site)
        sites += peers.rewrite_calls(module, options.epsilon)   # peer kernel calls (foxcompile/peers)
        reports.append(GraphReport(name or "top", before, module.code, sites, declined))
    reports[0].declined += peers.drain_declines()               # peer calls left to their kernel
    return reports


def _enable_debug_logging() -> None:
    if not any(getattr(h, "_foxcompile", False) for h in log.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[foxcompile] %(message)s"))
        handler._foxcompile = True
        log.addHandler(handler)
    log.setLevel(logging.DEBUG)


def _log_reports(reports: list[GraphReport], debug: bool | str) -> None:
    if debug:
        _enable_debug_logging()
    for report in reports:
        for site in report.sites:
            log.info("rewrote %s", site)
        for decline in report.declined:
            log.info("declined %s", decline)
        if not report.sites and not report.declined:
            log.debug("graph %s: no softmax or SDPA to consider", report.name)
            continue
        log.debug("graph %s before the rewrite:\n%s", report.name, report.before)
        if report.sites:
            log.debug("graph %s after the rewrite:\n%s", report.name, report.after)
        else:
            log.debug("graph %s after the rewrite: unchanged (nothing rewritten)", report.name)
    if isinstance(debug, str):
        os.makedirs(debug, exist_ok=True)
        for report in reports:
            safe = re.sub(r"[^A-Za-z0-9_-]+", "_", report.name).strip("_") or "graph"
            stem = os.path.join(debug, f"graph_{next(_dump_counter):03d}_{safe}")
            with open(stem + "_before.py", "w") as f:
                f.write(report.before)
            with open(stem + "_after.py", "w") as f:
                f.write(report.after)
            with open(os.path.join(debug, "report.txt"), "a") as f:
                f.writelines(f"rewrote  {s}\n" for s in report.sites)
                f.writelines(f"declined {d}\n" for d in report.declined)
        log.info("graphs and report written to %s", debug)


def _compile(gm, example_inputs, options: FoxOptions, mode: str | None):
    if options.compiler == "eager":
        return gm.forward
    if options.compiler == "aot_eager":
        from torch._dynamo.backends.debugging import aot_eager
        return aot_eager(gm, example_inputs)
    from torch._inductor import list_mode_options
    from torch._inductor.compile_fx import compile_fx
    patches = dict(list_mode_options(mode)) if mode else {}
    patches.update(options.inductor)
    return compile_fx(gm, example_inputs, config_patches=patches)


def fox_acp(gm: fx.GraphModule, example_inputs, *, mode: str | None = None,
            options: dict | None = None):
    """torch.compile backend: `torch.compile(model, backend="fox_acp", options={...})`.

    Options: "fox.epsilon" (pruning tolerance, default e^-10, 0 = no pruning), "fox.debug" (True
    logs every rewrite and decline with its source line and the graphs before and after; a
    directory also dumps them there), "fox.compiler" ("inductor", "aot_eager" or "eager"). Every
    other option, and `mode`, goes to Inductor.
    """
    parsed = FoxOptions.parse(options)
    if not ddp.pieces_of_rewritten_graph():  # else rewritten whole before DDP split it (ddp.py)
        ddp.warn_if_piece(gm)
        reports = rewrite_graphs(gm, example_inputs, parsed)
        _log_reports(reports, parsed.debug)
    return _compile(gm, example_inputs, parsed, mode)


def _rewrite_whole_graph(gm: fx.GraphModule, example_inputs, *, mode: str | None = None,
                         options: dict | None = None) -> None:
    """fox_acp's rewrite alone, on a whole graph that DDPOptimizer is about to split (ddp.py)."""
    parsed = FoxOptions.parse(options)
    _log_reports(rewrite_graphs(gm, example_inputs, parsed), parsed.debug)


setattr(fox_acp, ddp.REWRITE_ATTR, _rewrite_whole_graph)
ddp.install()
