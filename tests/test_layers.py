"""The package's layers hold: no module imports upward, and no import closes a cycle.

Layers, lowest first (DEVELOPERS.md, "Layout")::

    errors, fileio, schema  ->  data  ->  augment  ->  nn, losses, metrics  ->  methods
        ->  config  ->  engine  ->  evaluate  ->  cli (and ``python -m relssl``)

A module may import its own layer and the layers below it. Every import counts: module-level,
inside a function, under ``if TYPE_CHECKING:``, relative or absolute, ``import a.b`` or
``from a import b``. The check reads the source with :mod:`ast` (it imports nothing), so a
late import hidden in a function to dodge a cycle fails here as surely as a top-level one.

Why a short AST check rather than import-linter: the rule is one list and two loops, it needs no
extra dependency in CI, it names the file and line of the offending import, and it can also hold
the rule import-linter does not state directly: no cycle among modules *within* a layer.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

LAYERS: list[tuple[str, ...]] = [
    ("relssl.errors", "relssl.fileio", "relssl.schema"),
    ("relssl.data",),
    ("relssl.augment",),
    ("relssl.nn", "relssl.losses", "relssl.metrics"),
    ("relssl.methods",),
    ("relssl.config",),
    ("relssl.engine",),
    ("relssl.evaluate",),
    ("relssl.cli", "relssl.__main__"),
]


def modules(src: Path = SRC) -> dict[str, Path]:
    out = {}
    for path in sorted((src / "relssl").rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def layer_of(module: str) -> int | None:
    """The layer index of a module (``relssl`` itself, which only holds the version, has none)."""
    best = None
    for i, names in enumerate(LAYERS):
        for name in names:
            if module == name or module.startswith(name + "."):
                best = i
    return best


def imports_of(module: str, path: Path, known: dict[str, Path]) -> list[tuple[str, int]]:
    """Every relssl module ``module`` imports, anywhere in its source: (target, line)."""
    is_package = path.name == "__init__.py"
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            # "from pkg import sub" imports the module pkg.sub; "from pkg import name" imports pkg
            names = [f"{stem}.{a.name}" if f"{stem}.{a.name}" in known else stem for a in node.names]
        else:
            continue
        for name in names:
            if name != "relssl" and not name.startswith("relssl."):
                continue
            while name not in known and "." in name:  # "import relssl.nn.queue.x": the module part
                name = name.rsplit(".", 1)[0]
            if name != module:
                out.append((name, node.lineno))
    return out


def graph(src: Path = SRC) -> dict[str, list[tuple[str, int]]]:
    known = modules(src)
    return {m: imports_of(m, p, known) for m, p in known.items()}


def upward_imports(edges: dict[str, list[tuple[str, int]]]) -> list[str]:
    bad = []
    for src, targets in edges.items():
        ls = layer_of(src)
        for dst, line in targets:
            ld = layer_of(dst)
            if ls is None or ld is None:
                continue
            if ld > ls:
                bad.append(f"{src} (line {line}) imports {dst}: layer {' / '.join(LAYERS[ld])} is above "
                           f"{' / '.join(LAYERS[ls])}")
    return bad


def cycles(edges: dict[str, list[tuple[str, int]]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    adj = {m: sorted({d for d, _ in ts}) for m, ts in edges.items()}
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]

    def visit(root):
        work = [(root, iter(adj.get(root, ())))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(adj.get(w, ()))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
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

    for m in adj:
        if m not in index:
            visit(m)
    return out


def test_every_module_has_a_layer():
    missing = [m for m in modules() if m != "relssl" and layer_of(m) is None]
    assert not missing, f"modules outside every layer (add them to LAYERS): {missing}"


def test_no_module_imports_a_layer_above_its_own():
    bad = upward_imports(graph())
    assert not bad, "upward imports:\n  " + "\n  ".join(bad)


def test_no_import_cycle():
    found = cycles(graph())
    assert not found, "import cycles:\n  " + "\n  ".join(" <-> ".join(c) for c in found)


def test_no_method_imports_another_method():
    """A method's shared parts live in relssl.nn / relssl.losses / relssl.metrics or in the methods'
    own helper modules; a method module never imports another method module."""
    from relssl.methods import METHODS
    from relssl.methods.plugins import PLUGINS

    edges = graph()
    owners = {cls.__module__ for cls in [*METHODS.values(), *PLUGINS.values()]}
    bad = [f"{src} (line {line}) imports {dst}" for src in owners for dst, line in edges[src] if dst in owners]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("case", ["upward", "function-level", "cycle", "relative"])
def test_the_check_catches_what_it_must(case, tmp_path):
    """The checker itself, on a small package written here: each kind of violation is found."""
    pkg = tmp_path / "relssl"
    for sub in ("data", "engine"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "data" / "a.py").write_text("x = 1\n")
    (pkg / "data" / "b.py").write_text("y = 2\n")
    (pkg / "engine" / "run.py").write_text("from relssl.data.a import x\n")
    body = {
        "upward": ("data/a.py", "from relssl.engine.run import x\n"),
        "function-level": ("data/a.py", "def f():\n    import relssl.engine.run\n"),
        "cycle": ("data/a.py", "from relssl.data.b import y\n"),
        "relative": ("data/a.py", "def f():\n    from ..engine import run\n"),
    }[case]
    (pkg / body[0]).write_text(body[1])
    if case == "cycle":
        (pkg / "data" / "b.py").write_text("from relssl.data.a import x\n")
    edges = graph(tmp_path)
    if case == "cycle":
        assert cycles(edges) == [["relssl.data.a", "relssl.data.b"]]
        assert not upward_imports(edges)
    else:
        bad = upward_imports(edges)
        assert len(bad) == 1 and bad[0].startswith("relssl.data.a (line") and "imports relssl.engine" in bad[0]
