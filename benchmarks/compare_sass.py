"""Compare the machine code of two compile_offline.py dumps (--dump DIR), kernel by kernel: whether
the SASS is the same instruction for instruction once the parameters' constant-bank offsets are
masked (a change of the kernels' signatures moves them), and where it differs: outside or inside
the span of the tensor-core instructions (the inner loops), and how much of that is register
naming alone.

    python benchmarks/compile_offline.py --dump /tmp/new ...        # in this checkout
    python benchmarks/compile_offline.py --dump /tmp/old ...        # a copy, in the other one
    python benchmarks/compare_sass.py /tmp/old /tmp/new
"""
import argparse
import difflib
import os
import re
import subprocess

KERNELS = ("fwd", "dq", "dkdv", "row_dot", "max_norm")


def sass(tool, path):
    """The instructions of a cubin, parameters' constant-bank offsets and branch labels masked."""
    text = subprocess.run([tool, "-sass", path], capture_output=True, text=True).stdout
    lines = []
    for line in text.splitlines():
        match = re.match(r"\s*/\*[0-9a-f]+\*/\s+(.*?);", line)
        if match:
            ins = re.sub(r"c\[0x0\]\[0x[0-9a-f]+\]", "c[P]", match.group(1))
            lines.append(re.sub(r"`\(\.L_x_\d+\)", "L", ins))
    return lines


def differing(a, b):
    """(lines, first line index in a) of each differing stretch."""
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
    return [(max(i2 - i1, j2 - j1), i1) for tag, i1, i2, j1, j2 in matcher.get_opcodes()
            if tag != "equal"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old")
    parser.add_argument("new")
    args = parser.parse_args()
    import triton
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    for kernel in KERNELS:
        paths = [os.path.join(d, kernel + ".cubin") for d in (args.old, args.new)]
        if not all(os.path.exists(p) for p in paths):
            continue
        old, new = (sass(tool, p) for p in paths)
        mma = [i for i, line in enumerate(old) if "MMA" in line]
        lo, hi = (mma[0], mma[-1]) if mma else (0, -1)
        unnamed = [[re.sub(r"\bU?R\d+\b|\bU?P\d\b", "R", line) for line in x] for x in (old, new)]
        inside = sum(n for n, i in differing(old, new) if lo <= i <= hi)
        outside = sum(n for n, i in differing(old, new) if not lo <= i <= hi)
        renamed = sum(n for n, i in differing(*unnamed) if lo <= i <= hi)
        print(f"{kernel:<9} {'same' if old == new else 'differs'}: {len(old)} / {len(new)} "
              f"instructions; differing lines outside the MMA span {outside}, inside {inside} "
              f"({renamed} beyond register names)")


if __name__ == "__main__":
    main()
