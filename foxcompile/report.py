"""What the backend did to a graph: the sites it rewrote, the candidates it declined, and the
graph code before and after. Shared by explain() and the debug log."""
from dataclasses import dataclass, field

from .find.site import Decline, Site


@dataclass
class GraphReport:
    name: str
    before: str
    after: str = ""
    sites: list[Site] = field(default_factory=list)
    declined: list[Decline] = field(default_factory=list)


@dataclass
class Report:
    """`.sites` (rewrites), `.declined` (softmaxes left alone, each with `.reason`) and `.graphs`
    (GraphReport per compiled graph, with `.before` and `.after` code)."""
    graphs: list[GraphReport] = field(default_factory=list)

    @property
    def sites(self) -> list[Site]:
        return [s for graph in self.graphs for s in graph.sites]

    @property
    def declined(self) -> list[Decline]:
        return [d for graph in self.graphs for d in graph.declined]

    def __str__(self) -> str:
        lines = [f"foxcompile: {len(self.sites)} forgetting-attention site(s) rewritten, "
                 f"{len(self.declined)} declined, in {len(self.graphs)} graph(s)"]
        lines += [f"  rewrote  {site}" for site in self.sites]
        lines += [f"  declined {decline}" for decline in self.declined]
        return "\n".join(lines)
