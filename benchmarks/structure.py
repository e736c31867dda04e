"""Structure check of the wnb package (issue 20): import graph, circles, private imports, sizes, layering.

    python benchmarks/structure.py            # the table (exit status 0)
    python benchmarks/structure.py --json     # the counts and lists, machine-readable
    python benchmarks/structure.py --strict   # exit 1 when circles, private imports, modules over
                                              # MAX_MODULE_LINES or layering violations exist

Every module under the package folder is parsed with ``ast``; nothing is imported. What is counted:

- import graph: an edge A -> B for every ``import wnb.x``, ``from wnb.x import y``, ``from . import x``,
  ``from .x import y`` (to ``x.y`` when ``y`` is itself a submodule, else to ``x``), at module level or
  inside functions; imports in the body of ``if TYPE_CHECKING:`` are left out. Only the module named is
  an edge: the parent packages Python imports on the way (``wnb/__init__.py``) are not, or every module
  would sit in a circle with the package that re-exports it.
- circles: strongly connected components of more than one module, and modules importing themselves,
  over all edges (function-level imports included: an import moved into a function to dodge a circle
  is still a circle); the count over module-level edges only ("at import time") is shown beside it.
- private imports: ``from .x import _y`` (``_y`` not a submodule), a private submodule imported from
  outside its own package, and ``x._y`` where ``x`` names an imported wnb module (``wnb.x._y`` too).
- function-level imports: split by the top-level name imported into DEFERRED_OK (optional extras and
  heavy dependencies, with the reason each is allowed), wnb-internal, and other.
- sizes: modules over MAX_MODULE_LINES lines (the file's lines); functions and methods over
  MAX_FUNCTION_LINES (``def`` line to last line, decorators excluded). A declarative table may reach
  MAX_TABLE_LINES: a function marked with TABLE_MARKER (a comment on its ``def`` line or the line
  above it and its decorators), or one without branches (no if/while/try/with/match, nested def or
  class; ``for`` loops may stay) whose body, docstring aside, is at least TABLE_SHARE by lines
  statements that are a call with keyword arguments, of a class or of literals only, a constant or
  a literal container, alone or assigned (``p.add_argument(..., help=...)``, ``self.x =
  widgets.HTML()``, ``w.add_class("x")``, ``self.y: T = None``, ``X = {...}``), or ``for`` loops of
  only such statements. The report lists the functions let through this way.
- layering: with LAYERS, a module in package ``LAYERS[i]`` (``wnb/<package>/...``, or the module
  ``wnb/<name>.py`` when ``<name>`` is in the list) may import modules of ``LAYERS[0..i]`` only.
  Modules in no listed package are "flat" and not checked; neither is the public API ``wnb/__init__``.
"""
from __future__ import annotations

import argparse
import ast
import functools
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "wnb"
LAYERS = ["errors", "core", "model", "data", "tracing", "scoring", "reading", "compression", "experiments",
          "plots", "app", "widgets", "cli"]
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
MAX_TABLE_LINES = 100
TABLE_MARKER = "# structure: table"
TABLE_SHARE = 0.8
# Top-level names a function may import (instead of the module's head), and why.
DEFERRED_OK = {
    "lm_eval": "optional extra wnb[eval]",
    "compressed_tensors": "optional extra wnb[compressed] (8 s to import)",
    "datasets": "optional extra wnb[wikitext]; the WikiText-2 corpus only",
    "playwright": "test extra; browser tests only",
    "spacy": "not a dependency; optional tokenization",
    "huggingface_hub": "network: hub downloads only",
    "torch": "heavy (3 s); kept out of the light kernels (seats.py: the 'server full' page)",
    "transformers": "heavy; model loading only",
    "accelerate": "heavy (3 s); meta-device skeletons and offload only",
    "nnsight": "heavy (4 s); tracing only",
    "safetensors": "heavy with torch (3 s); cache and saving only",
    "gguf": "the bundled model's conversion only",
    "matplotlib": "heavy; figures only",
    "seaborn": "heavy (3 s); figures only",
    "scipy": "heavy (2 s); statistics only",
}
LITERALS = (ast.Constant, ast.JoinedStr, ast.Dict, ast.List, ast.Tuple, ast.Set)
CONTROL_FLOW = (ast.If, ast.AsyncFor, ast.While, ast.Try, ast.With, ast.AsyncWith, ast.FunctionDef,
                ast.AsyncFunctionDef, ast.ClassDef) + ((ast.Match,) if hasattr(ast, "Match") else ()) + \
               ((ast.TryStar,) if hasattr(ast, "TryStar") else ())


@dataclass
class Module:
    name: str          # dotted: wnb.widgets.app
    path: Path
    is_package: bool   # an __init__.py
    source: str
    tree: ast.Module

    @property
    def package(self) -> str:
        """The package relative imports start from."""
        return self.name if self.is_package else self.name.rpartition(".")[0]

    @functools.cached_property
    def scan(self) -> "Scan":
        return scan(self.tree)

    @property
    def lines(self) -> int:
        return len(self.source.splitlines())


@dataclass
class Edge:
    source: str
    target: str
    line: int
    in_function: bool


@dataclass
class Report:
    root: str
    modules: dict[str, int] = field(default_factory=dict)                 # name -> lines
    edges: list[Edge] = field(default_factory=list)
    circles: list[list[str]] = field(default_factory=list)                # all edges
    import_time_circles: list[list[str]] = field(default_factory=list)    # module-level edges only
    private_imports: list[str] = field(default_factory=list)
    function_imports: dict[str, list[str]] = field(default_factory=dict)  # kind -> "module:line name"
    long_modules: list[str] = field(default_factory=list)
    long_functions: list[str] = field(default_factory=list)
    table_functions: list[str] = field(default_factory=list)              # tables over the plain limit, allowed
    layering: list[str] = field(default_factory=list)
    flat: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def counts(self) -> dict:
        return {"modules": len(self.modules), "lines": sum(self.modules.values()), "edges": len(self.edges),
                "circles": len(self.circles), "import_time_circles": len(self.import_time_circles),
                "private_imports": len(self.private_imports),
                **{f"function_imports_{k}": len(v) for k, v in self.function_imports.items()},
                "long_modules": len(self.long_modules), "long_functions": len(self.long_functions),
                "table_functions": len(self.table_functions), "layering_violations": len(self.layering),
                "flat_modules": len(self.flat)}

    def failed(self) -> bool:
        """What --strict refuses."""
        return bool(self.circles or self.private_imports or self.long_modules or self.layering)


# ---------------------------------------------------------------- parsing

def find_modules(root: Path) -> dict[str, Module]:
    """Every .py file under ``root`` (the package folder), by dotted name."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        source = path.read_text(encoding="utf-8")
        name = ".".join(parts)
        modules[name] = Module(name, path, is_package, source, ast.parse(source, filename=str(path)))
    return modules


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
           (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


@dataclass
class Scan:
    """What one walk of a module's tree finds, in source order."""

    imports: list = field(default_factory=list)     # (Import or ImportFrom, inside a function?)
    functions: list = field(default_factory=list)   # (qualified name, def node)
    attributes: list = field(default_factory=list)  # Attribute nodes of a private name


def scan(tree: ast.Module) -> Scan:
    """One walk (it is most of the time): imports (not those under ``if TYPE_CHECKING:``), with whether
    they sit in a function; every function and method with its qualified name; private attributes."""
    found = Scan()
    stack = [(tree, "", False)]
    while stack:
        node, prefix, in_function = stack.pop()
        for child in ast.iter_child_nodes(node):
            kind = type(child)
            if kind is ast.Import or kind is ast.ImportFrom:
                found.imports.append((child, in_function))
            elif kind is ast.If and is_type_checking(child.test):
                stack.append((ast.Module(body=child.orelse, type_ignores=[]), prefix, in_function))
            elif kind is ast.FunctionDef or kind is ast.AsyncFunctionDef:
                found.functions.append((prefix + child.name, child))
                stack.append((child, f"{prefix}{child.name}.", True))
            elif kind is ast.ClassDef:
                stack.append((child, f"{prefix}{child.name}.", in_function))
            else:
                if kind is ast.Attribute and is_private(child.attr):
                    found.attributes.append(child)
                stack.append((child, prefix, in_function))
    found.imports.sort(key=lambda item: (item[0].lineno, item[0].col_offset))
    found.functions.sort(key=lambda item: item[1].lineno)
    found.attributes.sort(key=lambda node: (node.lineno, node.col_offset))
    return found


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def existing(name: str, modules: dict[str, Module]) -> str | None:
    """``name`` or its nearest enclosing module that exists in the package; None outside it."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def absolute_base(module: Module, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module.package.split(".")
    base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
    return ".".join(base + ([node.module] if node.module else []))


# ---------------------------------------------------------------- imports

@dataclass
class ImportFacts:
    edges: list[Edge] = field(default_factory=list)
    private: list[str] = field(default_factory=list)
    deferred: list[tuple[str, str]] = field(default_factory=list)   # (kind, "module:line name")
    bindings: dict[str, str] = field(default_factory=dict)         # local name -> wnb module


def deferred_kind(top: str, internal: bool) -> str:
    if internal:
        return "internal"
    return "optional" if top in DEFERRED_OK else "other"


def module_imports(module: Module, modules: dict[str, Module]) -> ImportFacts:
    """Edges, private from-imports, function-level imports and module bindings of one module."""
    facts = ImportFacts()
    for node, in_function in module.scan.imports:
        targets = (plain_import(node, module, modules, facts) if isinstance(node, ast.Import)
                   else from_import(node, module, modules, facts))
        for target in targets:
            facts.edges.append(Edge(module.name, target, node.lineno, in_function))
        if in_function:
            names = [a.name for a in node.names]
            what = (absolute_base(module, node) if isinstance(node, ast.ImportFrom) else names[0])
            internal = bool(targets) or (isinstance(node, ast.ImportFrom) and node.level > 0)
            label = f"{module.name}:{node.lineno} {what}" + (f" ({', '.join(names)})" if
                                                              isinstance(node, ast.ImportFrom) else "")
            facts.deferred.append((deferred_kind(what.split(".")[0], internal), label))
    return facts


def plain_import(node: ast.Import, module: Module, modules, facts: ImportFacts) -> list[str]:
    """``import wnb.x.y [as z]``: an edge to wnb.x.y; binds z (or ``wnb``)."""
    targets = []
    for alias in node.names:
        target = existing(alias.name, modules)
        if target is None:
            continue
        targets.append(target)
        if alias.asname:
            facts.bindings[alias.asname] = target
        else:
            facts.bindings[alias.name.split(".")[0]] = alias.name.split(".")[0]
    return targets


def from_import(node: ast.ImportFrom, module: Module, modules, facts: ImportFacts) -> list[str]:
    """``from X import a, b``: an edge to X.a when it is a submodule, else to X; private names recorded."""
    base = absolute_base(module, node)
    if existing(base, modules) is None:
        return []
    targets = []
    for alias in node.names:
        submodule = f"{base}.{alias.name}"
        if submodule in modules:
            targets.append(submodule)
            facts.bindings[alias.asname or alias.name] = submodule
            if is_private(alias.name) and base != module.package:  # a private module outside its package
                facts.private.append(f"{module.name}:{node.lineno} from {base} import {alias.name} (module)")
        else:
            target = existing(base, modules)
            targets.append(target)
            if is_private(alias.name) and target != module.name:
                facts.private.append(f"{module.name}:{node.lineno} from {base} import {alias.name}")
    return list(dict.fromkeys(targets))


def dotted(node: ast.expr) -> list[str] | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return [node.id, *reversed(parts)]


def private_attributes(module: Module, modules: dict[str, Module], bindings: dict[str, str]) -> list[str]:
    """``x._y`` where ``x`` (a name or dotted chain) is an imported wnb module other than this one."""
    found = []
    for node in module.scan.attributes:
        chain = dotted(node.value)
        if not chain or chain[0] not in bindings:
            continue
        target = bindings[chain[0]]
        for part in chain[1:]:
            target = f"{target}.{part}" if f"{target}.{part}" in modules else None
            if target is None:
                break
        if target is not None and target != module.name:
            found.append(f"{module.name}:{node.lineno} {'.'.join(chain)}.{node.attr}")
    return found


# ---------------------------------------------------------------- graph

def strongly_connected(nodes: list[str], edges: list[Edge]) -> list[list[str]]:
    """Circles: components of more than one module, and modules that import themselves (Tarjan, iterative)."""
    graph = {n: sorted({e.target for e in edges if e.source == n}) for n in nodes}
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(start):
        work = [(start, iter(graph[start]))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(graph[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph[node]:
                    found.append(sorted(component))

    for node in nodes:
        if node not in index:
            visit(node)
    return sorted(found)


def shortest_cycle(component: list[str], edges: list[Edge]) -> list[str]:
    """One shortest circle through the component's first module (breadth first), for the report."""
    members = set(component)
    graph = {n: sorted({e.target for e in edges if e.source == n and e.target in members}) for n in component}
    start = component[0]
    previous, frontier = {start: None}, [start]
    while frontier:
        following = []
        for node in frontier:
            for child in graph[node]:
                if child == start:
                    path = [node]
                    while previous[path[-1]] is not None:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if child not in previous:
                    previous[child] = node
                    following.append(child)
        frontier = following
    return [start]


def layer_of(name: str, root: str, layers: list[str]) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in layers else None


def layering_violations(report: Report, root: str, layers: list[str]) -> None:
    for name in report.modules:
        if name != root and layer_of(name, root, layers) is None:
            report.flat.append(name)
    for edge in report.edges:
        source, target = layer_of(edge.source, root, layers), layer_of(edge.target, root, layers)
        if source and target and layers.index(target) > layers.index(source):
            report.layering.append(f"{edge.source}:{edge.line} -> {edge.target} ({source} imports later {target})")


# ---------------------------------------------------------------- sizes

def is_table(function: ast.FunctionDef, lines: list[str]) -> bool:
    """Marked with TABLE_MARKER, or straight-line code that is mostly keyword calls and literals."""
    first = function.decorator_list[0].lineno if function.decorator_list else function.lineno
    marked = [lines[function.lineno - 1]] + ([lines[first - 2]] if first > 1 else [])
    if any(TABLE_MARKER in line for line in marked):
        return True
    body = function.body[1:] if ast.get_docstring(function) is not None else function.body
    if not body or any(isinstance(n, CONTROL_FLOW) for s in body for n in ast.walk(s)):
        return False
    declarative = sum(size(s) for s in body if is_declarative(s))
    return declarative >= TABLE_SHARE * sum(size(s) for s in body)


def size(node: ast.AST) -> int:
    return node.end_lineno - node.lineno + 1


def is_declarative(statement: ast.stmt) -> bool:
    """A call with keyword arguments (``add_argument(..., help=...)``, ``widgets.Button(description=...)``), of a
    class (``widgets.HTML()``) or of literals only (``add_class("x")``), a constant or a literal container, alone
    or assigned; a ``for`` loop made only of such statements."""
    if isinstance(statement, ast.For):
        return all(is_declarative(s) for s in statement.body)
    value = statement.value if isinstance(statement, (ast.Expr, ast.Assign, ast.AnnAssign, ast.Return)) else None
    if isinstance(value, ast.Call):
        callee = value.func.attr if isinstance(value.func, ast.Attribute) else getattr(value.func, "id", "")
        return bool(value.keywords) or callee[:1].isupper() or all(isinstance(a, LITERALS) for a in value.args)
    return isinstance(value, LITERALS)


def sizes(report: Report, module: Module) -> None:
    if module.lines > MAX_MODULE_LINES:
        report.long_modules.append(f"{module.name} ({module.lines})")
    lines = module.source.splitlines()
    for qualname, node in module.scan.functions:
        length = node.end_lineno - node.lineno + 1
        if length <= MAX_FUNCTION_LINES:
            continue
        label = f"{module.name}.{qualname} ({length})"
        if is_table(node, lines) and length <= MAX_TABLE_LINES:
            report.table_functions.append(label)
        else:
            report.long_functions.append(label + (" table" if is_table(node, lines) else ""))


# ---------------------------------------------------------------- report

def analyse(root: Path = ROOT, layers: list[str] | None = None) -> Report:
    start = time.perf_counter()
    root = Path(root)
    layers = LAYERS if layers is None else layers
    modules = find_modules(root)
    report = Report(root=root.name, modules={name: m.lines for name, m in modules.items()})
    report.function_imports = {"optional": [], "internal": [], "other": []}
    for module in modules.values():
        facts = module_imports(module, modules)
        report.edges += facts.edges
        report.private_imports += facts.private + private_attributes(module, modules, facts.bindings)
        for kind, label in facts.deferred:
            report.function_imports[kind].append(label)
        sizes(report, module)
    names = list(modules)
    report.circles = strongly_connected(names, report.edges)
    report.import_time_circles = strongly_connected(names, [e for e in report.edges if not e.in_function])
    layering_violations(report, root.name, layers)
    report.seconds = time.perf_counter() - start
    return report


def listing(title: str, items: list[str], limit: int) -> list[str]:
    lines = [f"  {title:<44} {len(items)}"]
    lines += [f"      {item}" for item in items[:limit]]
    if len(items) > limit:
        lines.append(f"      ... {len(items) - limit} more (--all lists them)")
    return lines


def circle_text(component: list[str], edges: list[Edge]) -> str:
    """A shortest circle through the component, and its members when there are more."""
    path = " -> ".join(shortest_cycle(component, edges))
    return f"{len(component)} modules: {path}" + ("" if len(component) <= 3 else f"  [{', '.join(component)}]")


def text(report: Report, limit: int = 15, full: bool = False) -> str:
    """The table; each list cut at ``limit`` items, the allowed function-level imports listed only if ``full``."""
    counts = report.counts()
    fi = report.function_imports
    out = [f"{report.root} structure: {counts['modules']} modules, {counts['lines']} lines, "
           f"{counts['edges']} import edges (parsed in {report.seconds:.2f} s)"]
    module_level = [e for e in report.edges if not e.in_function]
    out += listing("circles (all imports)", [circle_text(c, report.edges) for c in report.circles], limit)
    out += listing("circles at import time (module-level imports)",
                   [circle_text(c, module_level) for c in report.import_time_circles], limit)
    out += listing("private imports across modules", report.private_imports, limit)
    out.append(f"  {'imports inside functions':<44} {sum(len(v) for v in fi.values())}")
    out += listing("  optional/heavy dependency (DEFERRED_OK)", fi["optional"], limit if full else 0)
    out += listing("  wnb-internal", fi["internal"], limit)
    out += listing("  other", fi["other"], limit)
    out += listing(f"modules over {MAX_MODULE_LINES} lines", report.long_modules, limit)
    out += listing(f"functions over {MAX_FUNCTION_LINES} lines (tables over {MAX_TABLE_LINES})",
                   report.long_functions, limit)
    out += listing(f"tables of {MAX_FUNCTION_LINES}-{MAX_TABLE_LINES} lines (allowed)", report.table_functions, limit)
    out += listing("layering violations", report.layering, limit)
    out.append(f"  {'flat modules (in no LAYERS package; unchecked)':<44} {len(report.flat)}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="the package folder (default: wnb/)")
    parser.add_argument("--json", action="store_true", help="counts and lists as JSON")
    parser.add_argument("--all", action="store_true", help="list every item (default: the first 15 of each)")
    parser.add_argument("--strict", action="store_true",
                        help="exit 1 on circles, private imports, long modules or layering violations")
    args = parser.parse_args(argv)
    report = analyse(args.root)
    if args.json:
        lists = {k: getattr(report, k) for k in ("circles", "import_time_circles", "private_imports",
                                                  "function_imports", "long_modules", "long_functions",
                                                  "table_functions", "layering", "flat")}
        print(json.dumps({"counts": report.counts(), **lists, "seconds": round(report.seconds, 3)}, indent=1))
    else:
        print(text(report, limit=10**9 if args.all else 15, full=args.all))
    return int(args.strict and report.failed())


if __name__ == "__main__":
    sys.exit(main())
