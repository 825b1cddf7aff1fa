#!/usr/bin/env python3
"""The code's shape, as facts anyone can recompute: the workspace's crates
and their dependency edges, module cycles inside each library crate, and
the production files and functions past a size worth splitting.

    python3 scripts/shape.py            # the report
    python3 scripts/shape.py --check    # fails when a module cycle exists

Production code is every `src/` of the workspace but the test crate
(`tests/`), without its `#[cfg(test)]` modules. A module depends on another
when its code (comments and doc comments aside) names it as `crate::<m>`
or `super::<m>` from a top-level file, or imports it with
`use crate::{<m>, ...}`. Cargo already refuses cycles between crates; this
checks the modules within one.
"""

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FILE_LINES = 600
FN_LINES = 60


def workspace():
    meta = json.loads(
        subprocess.run(
            ["cargo", "metadata", "--no-deps", "--format-version", "1", "--offline"],
            cwd=ROOT, check=True, capture_output=True, text=True,
        ).stdout
    )
    members = {p["name"]: p for p in meta["packages"]}
    return members


def strip_comments(text):
    """Code without `//` comments (doc comments included) and block
    comments; string literals are kept (they rarely hold `crate::`)."""
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return "\n".join(re.sub(r"//.*$", "", line) for line in text.splitlines())


def without_tests(text):
    """The text before a `#[cfg(test)]` module (by convention the last item
    of a file here)."""
    m = re.search(r"^#\[cfg\(test\)\]\s*\n\s*mod \w+", text, flags=re.M)
    return text[: m.start()] if m else text


def modules_of(src):
    """Top-level module name -> its files (`x.rs` and `x/**`)."""
    mods = {}
    for f in sorted(src.rglob("*.rs")):
        rel = f.relative_to(src)
        top = rel.parts[0].removesuffix(".rs")
        if top in ("lib", "main"):
            continue
        mods.setdefault(top, []).append(f)
    return mods


def reexports(src, mods):
    """Items the crate root re-exports from its own modules
    (`pub use copy::{Copier, referrers};`): naming `crate::Copier` depends on
    `copy` as much as `crate::copy::Copier` does."""
    root = next((src / f for f in ("lib.rs", "main.rs") if (src / f).exists()), None)
    items = {}
    if root is None:
        return items
    code = strip_comments(root.read_text())
    for module, names in re.findall(r"\bpub(?:\([^)]*\))?\s+use\s+(\w+)::\{?([\w\s,]+)\}?\s*;", code):
        if module in mods:
            for name in re.findall(r"\w+", names):
                items[name] = module
    return items


def module_edges(src):
    mods = modules_of(src)
    items = reexports(src, mods)
    edges = {m: set() for m in mods}
    for m, files in mods.items():
        for f in files:
            code = strip_comments(without_tests(f.read_text()))
            named = set(re.findall(r"\bcrate::(\w+)", code))
            for group in re.findall(r"\bcrate::\{([^}]*)\}", code):
                named |= set(re.findall(r"^\s*(\w+)", part)[0] for part in group.split(",") if part.strip())
            if f.parent == src:  # a top-level file: its super is the crate
                named |= set(re.findall(r"\bsuper::(\w+)", code))
            for n in named:
                n = items.get(n, n)
                if n in mods and n != m:
                    edges[m].add(n)
    return edges


def cycles(edges):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in edges:
        if v not in index:
            visit(v)
    return out


FN_RE = re.compile(r"^\s*(?:pub(?:\([^)]*\))?\s+)?(?:const\s+)?(?:async\s+)?(?:unsafe\s+)?fn\s+(\w+)")


def long_functions(path):
    """(name, first line, lines) of each function longer than FN_LINES,
    counted from its `fn` line to its closing brace."""
    lines = without_tests(path.read_text()).splitlines()
    found = []
    i = 0
    while i < len(lines):
        m = FN_RE.match(lines[i])
        if not m:
            i += 1
            continue
        depth, opened, j = 0, False, i
        while j < len(lines):
            code = re.sub(r'"(?:\\.|[^"\\])*"', '""', re.sub(r"//.*$", "", lines[j]))
            code = re.sub(r"'(?:\\.|[^'\\])'", "''", code)
            for ch in code:
                if ch == "{":
                    depth, opened = depth + 1, True
                elif ch == "}":
                    depth -= 1
            if opened and depth <= 0:
                break
            if not opened and code.rstrip().endswith(";"):
                break  # a declaration without a body
            j += 1
        length = j - i + 1
        if opened and length > FN_LINES:
            found.append((m.group(1), i + 1, length))
        i += 1 if not opened else 1
    return found


def main():
    members = workspace()
    names = set(members)
    production = {n: p for n, p in members.items() if n != "relay-tests"}
    print("## Crates and their dependency edges (workspace crates only)")
    for n in sorted(production):
        deps = sorted({d["name"] for d in members[n]["dependencies"] if d["name"] in names and d.get("kind") is None})
        print(f"- {n}: {', '.join(deps) if deps else '—'}")
    print()
    all_cycles = []
    print("## Module cycles within a crate")
    for n in sorted(production):
        src = Path(members[n]["manifest_path"]).parent / "src"
        for c in cycles(module_edges(src)):
            all_cycles.append((n, c))
            print(f"- {n}: {' ↔ '.join(c)}")
    print(f"total: {len(all_cycles)}")
    print()
    big_files, big_fns = [], []
    for n in sorted(production):
        src = Path(members[n]["manifest_path"]).parent / "src"
        for f in sorted(src.rglob("*.rs")):
            if "/bin/" in str(f):
                continue
            rel = f.relative_to(ROOT)
            count = len(without_tests(f.read_text()).splitlines())
            if count > FILE_LINES:
                big_files.append((count, rel))
            for name, line, length in long_functions(f):
                big_fns.append((length, f"{rel}:{line}", name))
    print(f"## Production files over {FILE_LINES} lines (tests excluded): {len(big_files)}")
    for count, rel in sorted(big_files, reverse=True):
        print(f"- {rel}: {count}")
    print()
    print(f"## Production functions over {FN_LINES} lines: {len(big_fns)}")
    for length, where, name in sorted(big_fns, reverse=True):
        print(f"- {name} ({where}): {length}")
    if "--check" in sys.argv and all_cycles:
        sys.exit("module cycles found")


if __name__ == "__main__":
    main()
