"""foxcompile: find forgetting attention in any PyTorch model and run it with Adaptive
Computation Pruning. `torch.compile(model, backend="fox_acp")`."""
from .backend import fox_acp
from .explain import explain
from .contract import DEFAULT_EPSILON
from .op import forgetting_attention
from .stats import pruning_stats


def _register_backend() -> None:
    """Installed packages register fox_acp through their entry point; a source tree (PYTHONPATH)
    has none, so register here, once."""
    from importlib.metadata import entry_points

    from torch._dynamo.backends.registry import _COMPILER_FNS, register_backend
    if "fox_acp" in _COMPILER_FNS:
        return
    if any(ep.name == "fox_acp" for ep in entry_points(group="torch_dynamo_backends")):
        return
    register_backend(name="fox_acp")(fox_acp)


_register_backend()

from .peers import install as _install_peers  # noqa: E402  calls of fla's / the FoX authors' kernels
_install_peers()                              # (lazy: imports neither; see foxcompile/peers)

__all__ = ["fox_acp", "explain", "forgetting_attention", "pruning_stats", "DEFAULT_EPSILON"]
