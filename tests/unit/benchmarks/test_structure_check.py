"""benchmarks/structure.py (issue 20) on a tiny synthetic package written to tmp_path, with every kind of
finding once: a circle, a circle that exists only under TYPE_CHECKING (not counted), private imports of
both forms, function-level imports (an optional dependency, a wnb-internal one, another), a long module,
a long function, a marked table, a declarative table found by the heuristic, and a layering violation."""
from __future__ import annotations

import json
import textwrap

import pytest
import structure


def body(n: int, indent: str = "    ") -> str:
    return "".join(f"{indent}x{i} = len('{i}') + {i}\n" for i in range(n))


FILES = {
    "__init__.py": "from .a import f\n",
    "a.py": ("from typing import TYPE_CHECKING\n"
             "from .b import g\n"
             "from .c import C\n"
             "if TYPE_CHECKING:\n"
             "    from .cli.n import N\n"      # left out of the graph
             "def h():\n"
             "    import lm_eval\n"            # optional dependency: allowed
             "    return lm_eval\n"
             "def k():\n"
             "    from .d import y\n"          # wnb-internal import inside a function
             "    import json\n"               # anything else
             "    return y, json\n"
             "def f():\n" + body(64) +         # 65 lines: too long
             "# structure: table\n"
             "def marked():\n" + body(79) +    # 80 lines, marked: allowed
             "def layout(self):\n" + "".join(f"    self.w{i} = Button(description='{i}')\n" for i in range(70))),
    "b.py": "from . import a\ndef g():\n    return a.f\n",
    "c.py": ("from __future__ import annotations\n"
             "import typing\n"
             "from . import d\n"
             "from .d import _hidden, y\n"     # private name
             "if typing.TYPE_CHECKING:\n"
             "    from .a import f\n"          # a <-> c only for the type checker: no circle
             "class C:\n"
             "    value = d._x\n"              # private attribute of an imported module
             "    own = _hidden\n"),
    "d.py": "_hidden = 1\n_x = 2\ny = 3\n",
    "big.py": "".join(f"v{i} = {i}\n" for i in range(401)),
    "core/__init__.py": "",
    "core/m.py": "from ..cli import n\n",    # core imports the later cli: a layering violation
    "cli/__init__.py": "from ..core import m\n",
    "cli/n.py": "N = 1\n",
}


@pytest.fixture
def package(tmp_path):
    root = tmp_path / "pkg"
    for name, text in FILES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def test_counts_on_a_synthetic_package(package):
    report = structure.analyse(package)
    counts = report.counts()
    assert counts["modules"] == len(FILES)
    assert report.circles == [["pkg.a", "pkg.b"]]  # the TYPE_CHECKING import made no a <-> c circle
    edges = {(e.source, e.target) for e in report.edges}
    assert ("pkg.c", "pkg.a") not in edges and ("pkg.a", "pkg.cli.n") not in edges
    assert report.import_time_circles == [["pkg.a", "pkg.b"]]
    assert sorted(report.private_imports) == ["pkg.c:4 from pkg.d import _hidden", "pkg.c:8 d._x"]
    assert [len(report.function_imports[k]) for k in ("optional", "internal", "other")] == [1, 1, 1]
    assert report.function_imports["optional"][0].startswith("pkg.a:7 lm_eval")
    assert report.long_modules == ["pkg.big (401)"]
    assert report.long_functions == ["pkg.a.f (65)"]
    assert report.table_functions == ["pkg.a.marked (80)", "pkg.a.layout (71)"]
    assert report.layering == ["pkg.core.m:1 -> pkg.cli.n (core imports later cli)"]
    assert "pkg.a" in report.flat and "pkg.core.m" not in report.flat and "pkg" not in report.flat
    assert report.failed()


def test_submodule_edges_and_function_level_circles(package):
    (package / "d.py").write_text("def later():\n    from . import b\n    return b\n")  # d -> b inside a function
    (package / "b.py").write_text("from . import a\nfrom .core import m\n")  # `m` is a submodule: an edge to core.m
    report = structure.analyse(package)
    edges = {(e.source, e.target) for e in report.edges}
    assert ("pkg.b", "pkg.core.m") in edges and ("pkg.b", "pkg.core") not in edges
    assert ("pkg.core.m", "pkg.cli.n") in edges and ("pkg.cli", "pkg.core.m") in edges
    # c -> d -> b -> a -> c: a circle only through the function-level import
    assert report.circles == [["pkg.a", "pkg.b", "pkg.c", "pkg.d"]]
    assert report.import_time_circles == [["pkg.a", "pkg.b"]]
    assert structure.shortest_cycle(report.circles[0], report.edges) == ["pkg.a", "pkg.b", "pkg.a"]


def test_layering_off_and_flat(package):
    report = structure.analyse(package, layers=[])
    assert report.layering == [] and len(report.flat) == len(FILES) - 1


def test_command_json_and_strict(package, capsys):
    assert structure.main(["--root", str(package), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["counts"]["circles"] == 1 and data["counts"]["private_imports"] == 2
    assert data["counts"]["function_imports_optional"] == 1 and data["counts"]["layering_violations"] == 1
    assert structure.main(["--root", str(package), "--strict"]) == 1
    assert "circles (all imports)" in capsys.readouterr().out
    for name in ("a.py", "b.py", "c.py", "big.py", "core/m.py"):
        (package / name).write_text("")
    assert structure.main(["--root", str(package), "--strict"]) == 0


def test_runs_on_wnb():
    report = structure.analyse()
    assert report.counts()["modules"] >= 40 and "wnb.cli" in report.modules
