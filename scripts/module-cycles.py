#!/usr/bin/env python3
"""Fails when the modules of a crate import each other in a cycle.

A module's dependencies are the `crate::a::b` paths and `super::x` paths in
its source (comments and `#[cfg(test)] mod tests` left out), each resolved
to the longest module path that exists. A strongly connected component of
two or more modules is a cycle. The crate root (lib.rs) is left out: it
wires the modules together and every module may use what it defines.

Usage: scripts/module-cycles.py CRATE_SRC_DIR...
"""
import os
import re
import sys


def modules(root):
    found = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(dirpath, f)
            parts = os.path.relpath(path, root)[:-3].split(os.sep)
            if parts[-1] in ("mod", "lib", "main"):
                parts = parts[:-1]
            if not parts:
                continue
            text = open(path, encoding="utf-8").read()
            text = re.split(r"#\[cfg\(test\)\]\s*mod tests", text)[0]
            text = re.sub(r"^\s*//.*$", "", text, flags=re.M)
            deps = set()
            for m in re.finditer(r"crate::([a-z_][a-z0-9_]*(?:::[a-z_][a-z0-9_]*)*)", text):
                deps.add(m.group(1))
            for m in re.finditer(r"\bsuper::([a-z_][a-z0-9_]*)", text):
                deps.add("::".join(parts[:-1] + [m.group(1)]))
            found["::".join(parts)] = deps
    return found


def graph(found):
    def resolve(path):
        while path and path not in found:
            path = "::".join(path.split("::")[:-1])
        return path

    return {
        m: {r for r in map(resolve, deps) if r and r != m and not m.startswith(r + "::")}
        for m, deps in found.items()
    }


def cycles(g):
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g[v]:
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
    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def main():
    failed = False
    for root in sys.argv[1:]:
        g = graph(modules(root))
        found = cycles(g)
        for c in found:
            print(f"{root}: import cycle: {' -> '.join(c)}")
        if not found:
            print(f"{root}: no import cycle among {len(g)} modules")
        failed |= bool(found)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
