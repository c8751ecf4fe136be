#!/usr/bin/env python3
"""Import edges between the top-level modules of src/, then every two-way edge and every cycle.

Usage: scripts/modgraph.py [SRC_DIR]   (default: src)

An edge a -> b is any `crate::b` path (code or doc link) in a file under module a, test modules
(`#[cfg(test)] mod tests`) excluded. Prints the edges with their counts, then the summary lines
`edges: N`, `two-way edges: ...` and `cycles: ...` (strongly connected groups of more than one
module). Exit status 1 when there is a cycle. tests/module_graph.rs checks the same in CI.
"""
import collections
import os
import re
import sys

root = sys.argv[1] if len(sys.argv) > 1 else 'src'
edges = collections.Counter()
for dp, _, fs in os.walk(root):
    for f in fs:
        if not f.endswith('.rs'):
            continue
        p = os.path.join(dp, f)
        parts = os.path.relpath(p, root)[:-3].split(os.sep)
        src = parts[0]
        if src in ('lib', 'main'):
            continue
        text = open(p).read()
        # strip test modules roughly
        text = re.split(r'#\[cfg\(test\)\]\s*mod tests', text)[0]
        for m in re.finditer(r'crate::(\w+)', text):
            if m.group(1) != src:
                edges[(src, m.group(1))] += 1
        for m in re.finditer(r'use crate::\{([^}]*)\}', text):
            for d in re.findall(r'(?:^|,)\s*(\w+)', m.group(1)):
                if d != src:
                    edges[(src, d)] += 1

for (a, b), n in sorted(edges.items()):
    print(f"{a} -> {b} ({n})")

graph = collections.defaultdict(set)
for a, b in edges:
    graph[a].add(b)
    graph[b]
two_way = sorted((a, b) for a, b in edges if a < b and (b, a) in edges)

# Tarjan's strongly connected components.
index, low, stack, on, sccs = {}, {}, [], set(), []


def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on.add(v)
    for w in sorted(graph[v]):
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
            sccs.append(sorted(comp))


sys.setrecursionlimit(10000)
for v in sorted(graph):
    if v not in index:
        visit(v)

print(f"edges: {len(edges)}")
print("two-way edges: " + (", ".join(f"{a} <-> {b}" for a, b in two_way) or "none"))
print("cycles: " + ("; ".join("{" + ", ".join(c) + "}" for c in sccs) or "none"))
sys.exit(1 if sccs else 0)
