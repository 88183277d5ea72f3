"""birdsep's module import graph, as layers, with its import cycles.

Reads the source only (the AST of every ``src/birdsep/**/*.py``; nothing is imported), so it
runs in any checkout, with or without PyTorch:

    python benchmarks/import_graph.py > benchmarks/results/import_graph_after.txt

An edge A → B means module A imports birdsep module B. Three kinds are told apart:

- module level: run when A is imported (also inside a top-level ``if``/``try``);
- lazy (marked ``~``): inside a function, run only when the function is called;
- typing (marked ``?``): under ``if TYPE_CHECKING:``, never run.

Layers are built from the module-level edges: layer 0 imports no birdsep module, layer n
imports only layers below n. Modules on a module-level cycle share one layer (listed as one
group). A lazy import whose target imports its importer back (through any chain of imports)
closes a cycle that only the laziness hides; those are listed too, and the summary counts the
lazy imports that point to a higher layer (upward).
"""
from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "birdsep"


def module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def find_modules(src: Path) -> dict[str, Path]:
    return {module_name(p, src): p for p in sorted((src / PACKAGE).rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The birdsep module that ``name`` names (or the nearest enclosing one)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(mod: str, path: Path, modules: dict[str, Path]) -> dict[str, str]:
    """{imported birdsep module: kind}, kind 'module' beats 'lazy' beats 'typing'."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    found: dict[str, str] = {}
    rank = {"module": 0, "lazy": 1, "typing": 2}

    def add(target: str | None, kind: str) -> None:
        if target is None or target == mod:
            return
        if target not in found or rank[kind] < rank[found[target]]:
            found[target] = kind

    def visit(node: ast.AST, kind: str) -> None:
        for child in ast.iter_child_nodes(node):
            child_kind = kind
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) and kind == "module":
                child_kind = "lazy"
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for sub in child.body:
                    visit_one(sub, "typing")
                for sub in child.orelse:
                    visit_one(sub, kind)
                continue
            visit_one(child, child_kind)

    def visit_one(node: ast.AST, kind: str) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE:
                    add(_resolve(alias.name, modules), kind)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            if origin.split(".")[0] == PACKAGE:
                for alias in node.names:
                    # `from birdsep import audio` names the module birdsep.audio
                    add(_resolve(f"{origin}.{alias.name}", modules), kind)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) and kind == "module":
            kind = "lazy"
        visit(node, kind)

    visit(tree, "module")
    return found


def strongly_connected(nodes: list[str], edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm (iterative); components in reverse topological order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for root in nodes:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, it = work[-1]
            advanced = False
            for nxt in it:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(edges[nxt]))))
                    advanced = True
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    comp.append(top)
                    if top == node:
                        break
                out.append(sorted(comp))
    return out


def one_cycle(comp: list[str], edges: dict[str, set[str]]) -> list[str]:
    """A shortest cycle through the component's first module, as a path A → … → A."""
    start = comp[0]
    members = set(comp)
    prev: dict[str, str] = {}
    frontier = [start]
    seen = {start}
    while frontier:
        nxt_frontier = []
        for node in frontier:
            for nxt in sorted(edges[node] & members):
                if nxt == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(prev[path[-1]])
                    return [start] + path[::-1][1:] + [start] if len(path) > 1 else [start, start]
                if nxt not in seen:
                    seen.add(nxt)
                    prev[nxt] = node
                    nxt_frontier.append(nxt)
        frontier = nxt_frontier
    return comp


def short(mod: str) -> str:
    return mod[len(PACKAGE) + 1:] if mod.startswith(PACKAGE + ".") else mod


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", type=Path, default=ROOT / "src", help="the folder that holds birdsep/")
    args = parser.parse_args()

    modules = find_modules(args.src)
    kinds = {m: imports_of(m, p, modules) for m, p in modules.items()}
    names = sorted(modules)
    strict = {m: {t for t, k in kinds[m].items() if k == "module"} for m in names}
    lazy = {m: {t for t, k in kinds[m].items() if k == "lazy"} for m in names}
    every = {m: strict[m] | lazy[m] for m in names}

    comps = strongly_connected(names, strict)
    comp_of = {m: i for i, c in enumerate(comps) for m in c}
    layer: dict[int, int] = {}
    for i, comp in enumerate(comps):  # reverse topological: dependencies come first
        deps = {comp_of[t] for m in comp for t in strict[m]} - {i}
        layer[i] = 1 + max((layer[d] for d in deps), default=-1)
    layer_of = {m: layer[comp_of[m]] for m in names}

    cycles = [c for c in comps if len(c) > 1]
    all_comps = [c for c in strongly_connected(names, every) if len(c) > 1]
    upward = sorted((m, t) for m in names for t in lazy[m] if layer_of[t] > layer_of[m])
    comp_every = {m: i for i, c in enumerate(all_comps) for m in c}
    closing = sorted((m, t) for m in names for t in lazy[m]
                     if m in comp_every and comp_every.get(t) == comp_every[m])
    n_strict = sum(map(len, strict.values()))
    n_lazy = sum(map(len, lazy.values()))
    n_typing = sum(1 for m in names for k in kinds[m].values() if k == "typing")

    print("# birdsep import graph")
    print("command: python benchmarks/import_graph.py")
    print()
    print(f"modules: {len(names)}   module-level imports: {n_strict}   lazy imports: {n_lazy}"
          f"   TYPE_CHECKING imports: {n_typing}")
    print(f"layers: {1 + max(layer_of.values())}   module-level cycles: {len(cycles)}"
          f"   cycles counting lazy imports too: {len(all_comps)}")
    print(f"lazy imports to a higher layer: {len(upward)}   lazy imports that close a cycle: {len(closing)}")
    print()

    print("## Module-level import cycles")
    if not cycles:
        print("none")
    for comp in cycles:
        print(f"- {{{', '.join(map(short, comp))}}}: " + " → ".join(map(short, one_cycle(comp, strict))))
    print()
    print("## Cycles once lazy imports count (~ marks a lazy edge on the path shown)")
    if not all_comps:
        print("none")
    for comp in all_comps:
        path = one_cycle(comp, every)
        shown = [short(path[0])]
        for a, b in zip(path, path[1:]):
            shown.append(("~" if b not in strict[a] else "") + short(b))
        print(f"- {{{', '.join(map(short, comp))}}}")
        print("  " + " → ".join(shown))
    print()
    print("## Lazy imports that close a cycle")
    if not closing:
        print("none")
    for m, t in closing:
        print(f"- {short(m)} (layer {layer_of[m]}) ~> {short(t)} (layer {layer_of[t]})")
    print()

    print("## Layers (bottom first): module: its birdsep imports (~ lazy, ? TYPE_CHECKING)")
    for n in range(1 + max(layer_of.values())):
        print(f"### layer {n}")
        for m in sorted(m for m in names if layer_of[m] == n):
            mark = "  [cycle]" if len(comps[comp_of[m]]) > 1 else ""
            deps = sorted(kinds[m].items(), key=lambda kv: (kv[1] != "module", kv[0]))
            shown = [("~" if k == "lazy" else "?" if k == "typing" else "") + short(t) for t, k in deps]
            print(f"{short(m)}{mark}: {', '.join(shown) if shown else '-'}")
        print()


if __name__ == "__main__":
    sys.exit(main())
