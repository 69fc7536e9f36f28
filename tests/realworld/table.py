"""The real-world table of docs/matching.md: library x model x attention path -> the sites
foxcompile finds (with their decay labels) or the first decline reason, from the cases of the
real-world suite (tests/realworld/test_*.py) run through foxcompile.explain.

    python tests/realworld/table.py            # print the Markdown table
    python tests/realworld/table.py --write    # rewrite it in docs/matching.md, between the markers

Needs the `realworld` extra (`pip install -e ".[realworld]"`); a library that is missing is left
out of the table, with a note on stderr."""
import argparse
import importlib
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

MODULES = ["test_x_transformers", "test_transformers", "test_einx_einops", "test_torch_spellings"]
BEGIN, END = "<!-- realworld-table:begin -->", "<!-- realworld-table:end -->"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _reason(text: str) -> str:
    """A decline reason without the source location it names (those move with every release)."""
    text = re.sub(r" at [\w.]+\.py:\d+ in \w+", "", text)
    return text


def _result(sites, declines) -> str:
    if not sites and not declines:
        return "no attention seen"
    if sites:
        labels = ", ".join(sorted(sites))
        return f"**{len(sites)} site{'s' if len(sites) > 1 else ''}** ({labels})"
    if declines:
        return "declined: " + _reason(declines[0])
    return "no attention seen"


def rows():
    from realworld.common import explain
    out = []
    for name in MODULES:
        try:
            module = importlib.import_module(f"realworld.{name}")
        except pytest.skip.Exception as why:
            print(f"{name}: skipped ({why})", file=sys.stderr)
            continue
        for case in module.CASES:
            report = explain(case)
            out.append((case.library, case.model, case.path,
                        _result([s.decay for s in report.sites], [d.reason for d in report.declined])))
        for model, attn in getattr(module, "GENERATE", ()):
            _, _, capture = module.generate(model, attn, compiled=True)
            sites = [re.search(r"decay (\w+)", s).group(1) for s in capture.rewrote]
            declines = [d.split("): ", 1)[-1] for d in capture.declined]
            result = _result(sites, [])
            if declines:
                result += ("; " if sites else "") + "declined: " + _reason(declines[0])
            out.append(("transformers", module.MODEL_NAMES[model],
                        f"{attn}, generate() with a cache (prefill, 2 decoding steps)", result))
    return out


def table() -> str:
    lines = ["| library | model | attention path | found |", "|---|---|---|---|"]
    lines += [f"| {' | '.join(_cell(x) for x in row)} |" for row in rows()]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite the table in docs/matching.md")
    args = parser.parse_args()
    text = table()
    if not args.write:
        print(text)
        return
    doc = ROOT / "docs" / "matching.md"
    old = doc.read_text()
    if BEGIN not in old or END not in old:
        sys.exit(f"{doc}: markers {BEGIN} / {END} not found")
    head, rest = old.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    doc.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")
    print(f"wrote {doc}")


if __name__ == "__main__":
    main()
