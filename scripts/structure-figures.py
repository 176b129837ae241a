#!/usr/bin/env python3
"""Structure figures of the crate, for a maintainer's before/after comparison.

    scripts/structure-figures.py [REPO_DIR]

Prints, over src/ without test files (*_tests.rs, tests.rs, #[cfg(test)] modules):
- production files above 600 lines;
- functions above 80 lines (by brace matching from each `fn`);
- `Result<_, String>` in function signatures;
- module-level import circles between top-level modules (src/X or src/X.rs),
  from `use crate::X` and `crate::X::` paths.
Text-based: good for trends, not a compiler. Run it on an old checkout
(`git worktree add /tmp/old COMMIT`) for the "before" figures.
"""
import os
import re
import sys

root = sys.argv[1] if len(sys.argv) > 1 else "."
src = os.path.join(root, "src")


def production_text(text):
    """The file without its #[cfg(test)] module(s)."""
    out = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        # Attributes (`#[allow(...)]`) may stand between #[cfg(test)] and the module.
        k = i + 1
        while k < len(lines) and lines[k].strip().startswith("#["):
            k += 1
        if lines[i].strip() == "#[cfg(test)]" and k < len(lines) and re.match(r"\s*mod \w+ \{", lines[k]):
            depth = 0
            j = k
            while j < len(lines):
                depth += lines[j].count("{") - lines[j].count("}")
                j += 1
                if depth <= 0:
                    break
            i = j
            continue
        out.append(lines[i])
        i += 1
    return out


files = {}
for d, _, names in os.walk(src):
    for n in names:
        if not n.endswith(".rs") or n.endswith("_tests.rs") or n == "tests.rs":
            continue
        p = os.path.join(d, n)
        with open(p, encoding="utf-8") as f:
            files[os.path.relpath(p, root)] = production_text(f.read())

big = sorted(((len(v), k) for k, v in files.items() if len(v) > 600), reverse=True)
print(f"production files: {len(files)}, lines: {sum(len(v) for v in files.values())}")
print(f"files above 600 lines: {len(big)}")
for n, k in big:
    print(f"  {n:5} {k}")

fn_re = re.compile(r"^\s*(pub(\([^)]*\))?\s+)?(async\s+)?(const\s+)?(unsafe\s+)?fn\s+(\w+)")
long_fns = []
string_results = 0
for k, lines in files.items():
    for i, line in enumerate(lines):
        m = fn_re.match(line)
        if not m:
            continue
        sig = " ".join(lines[i:i + 6])
        if re.search(r"Result<[^;{]*,\s*String>", sig.split("{")[0]):
            string_results += 1
        depth = 0
        started = False
        for j in range(i, len(lines)):
            depth += lines[j].count("{") - lines[j].count("}")
            if "{" in lines[j]:
                started = True
            if started and depth <= 0:
                break
            if not started and lines[j].rstrip().endswith(";"):
                break
        n = j - i + 1
        if started and n > 80:
            long_fns.append((n, f"{k}: {m.group(6)}"))
long_fns.sort(reverse=True)
print(f"functions above 80 lines: {len(long_fns)}")
for n, f in long_fns:
    print(f"  {n:5} {f}")
print(f"functions returning Result<_, String>: {string_results}")


def top_module(path):
    rel = os.path.relpath(path, "src") if not path.startswith("src/") else path[4:]
    first = rel.split("/")[0]
    return first[:-3] if first.endswith(".rs") else first


edges = {}
for k, lines in files.items():
    me = top_module(k)
    for line in lines:
        code = line.split("//")[0]
        for m in re.finditer(r"crate::(\w+)", code):
            other = m.group(1)
            if other != me:
                edges.setdefault(me, set()).add(other)

# circles among top-level modules (strongly connected components above one node)
index = {}
low = {}
stack = []
on = set()
sccs = []
counter = [0]


def strong(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on.add(v)
    for w in sorted(edges.get(v, ())):
        if w not in index:
            strong(w)
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
            sccs.append(sorted(comp))


for v in sorted(set(edges) | {w for ws in edges.values() for w in ws}):
    if v not in index:
        strong(v)
print(f"import circles between top-level modules: {len(sccs)}")
for c in sccs:
    print("  " + " <-> ".join(c))
