"""explain(): what fox_acp would rewrite in a model, and why it leaves the rest alone."""
import torch

from .backend import rewrite_graphs
from .options import FoxOptions
from .report import Report


def explain(model_or_fn, *args, **kwargs) -> Report:
    """Trace model_or_fn(*args, **kwargs) once with Dynamo, match and rewrite as fox_acp would,
    run the rewritten graphs eagerly, and return the Report (`.sites`, `.declined`, `.graphs`).
    Nothing stays compiled: like torch._dynamo.explain, this resets Dynamo before and after."""
    report = Report()

    def backend(gm, example_inputs):
        report.graphs.extend(rewrite_graphs(gm, example_inputs, FoxOptions()))
        return gm.forward

    torch._dynamo.reset()
    try:
        torch.compile(model_or_fn, backend=backend)(*args, **kwargs)
    finally:
        torch._dynamo.reset()
    return report
