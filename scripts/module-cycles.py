#!/usr/bin/env python3
"""Fails when the modules of a crate import each other in a cycle.

A module's dependencies are the `crate::a::b` paths and `super::x` paths in
its source (comments and `#[cfg(test)] mod tests` left out), each resolved
to the longest module path that exists. A strongly connected component of
two or more modules is a cycle. The crate root (lib.rs) is left out: it
wires the modules together and every module may use what it defines.

With `--layers DIR=SPEC`, the top-level modules of the crate in DIR also
form layers: SPEC lists them lowest first, `;` between layers and `,`
within one (`retry,tls;config;sink`). A module that imports from a layer
above its own, or a top-level module SPEC does not name, fails the check.

Usage: scripts/module-cycles.py [--layers DIR=SPEC]... CRATE_SRC_DIR...
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


def layer_violations(root, g, spec):
    """Imports that go up the layers of SPEC, and modules SPEC leaves out."""
    layer = {}
    for i, names in enumerate(spec.split(";")):
        for name in names.split(","):
            layer[name.strip()] = i
    top = lambda m: m.split("::")[0]
    out = [f"{root}: module `{m}` is in no layer of --layers"
           for m in sorted({top(m) for m in g}) if m not in layer]
    for m in sorted(g):
        for d in sorted(g[m]):
            a, b = top(m), top(d)
            if a in layer and b in layer and layer[b] > layer[a]:
                out.append(f"{root}: `{m}` imports `{d}`, a higher layer")
    return out


def main():
    args, layers = sys.argv[1:], {}
    while args and args[0] == "--layers":
        root, _, spec = args[1].partition("=")
        layers[root.rstrip("/")] = spec
        args = args[2:]
    failed = False
    for root in args:
        g = graph(modules(root))
        found = cycles(g)
        for c in found:
            print(f"{root}: import cycle: {' -> '.join(c)}")
        if not found:
            print(f"{root}: no import cycle among {len(g)} modules")
        failed |= bool(found)
        spec = layers.get(root.rstrip("/"))
        if spec is not None:
            bad = layer_violations(root, g, spec)
            for line in bad:
                print(line)
            if not bad:
                print(f"{root}: every import goes down the layers {spec}")
            failed |= bool(bad)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
