"""The layers of src/colm, by an AST scan of every import (function-local ones included).

One rule per package, also stated in the docstring of its __init__:
- colm.selection: torch, numpy, numba and the standard library; of colm, only colm.config,
  colm.errors, colm.field_types (text to values), colm.tagged_files (the checkpoint file format)
  and colm.selection itself.
- colm.diagnostics: torch and the standard library; of colm, only colm.errors and itself.
- colm.features: not colm.integrations, colm.training, colm.compare, colm.cli.
- colm.data: not colm.models, colm.integrations, colm.training, colm.compare, colm.cli.
- colm.models: not colm.integrations, colm.training, colm.compare, colm.cli.
- colm.integrations: not colm.training, colm.compare, colm.cli.
- colm.training (one run: plan, trainer, timing): not colm.compare, not colm.cli.
- colm.compare: not colm.cli.
- Every module outside colm.cli (top-level modules included): not colm.cli. The command line
  hands library work down; nothing climbs back up into it.
And no import cycle between modules (module-level imports, outside `if TYPE_CHECKING:`).
"""
from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
STDLIB = set(sys.stdlib_module_names)

# package -> (third-party roots allowed or None for any, colm prefixes forbidden or allowed)
ALLOWED_THIRD_PARTY = {"colm.selection": {"torch", "numpy", "numba", "safetensors"},
                       "colm.diagnostics": {"torch"}}
ALLOWED_COLM = {"colm.selection": ("colm.config", "colm.errors", "colm.field_types", "colm.tagged_files",
                                   "colm.selection"),
                "colm.diagnostics": ("colm.errors", "colm.diagnostics")}
FORBIDDEN_COLM = {
    "colm.features": ("colm.integrations", "colm.training", "colm.compare", "colm.cli"),
    "colm.data": ("colm.models", "colm.integrations", "colm.training", "colm.compare", "colm.cli"),
    "colm.models": ("colm.integrations", "colm.training", "colm.compare", "colm.cli"),
    "colm.integrations": ("colm.training", "colm.compare", "colm.cli"),
    "colm.training": ("colm.compare", "colm.cli"),
    "colm.compare": ("colm.cli",),
}
#: The only package that may import colm.cli.
CLI = "colm.cli"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported module, line, at module level outside TYPE_CHECKING) of every import."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend((a.name, child.lineno, top) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parent = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join(parent + ([base] if base else []))
                found.append((base, child.lineno, top))
                # `from colm.x import y` may import the submodule colm.x.y
                found.extend((f"{base}.{a.name}", child.lineno, top) for a in child.names
                             if (SRC / f"{base}.{a.name}".replace(".", "/")).with_suffix(".py").exists()
                             or (SRC / f"{base}.{a.name}".replace(".", "/") / "__init__.py").exists())
            elif isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                visit(child, False)
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, False)
            else:
                visit(child, top)
    visit(tree, True)
    return found


MODULES = {module_name(p): p for p in sorted((SRC / "colm").rglob("*.py"))}


def violations() -> list[str]:
    out = []
    for name, path in MODULES.items():
        for target, line, _ in imports(path):
            where = f"{path.relative_to(SRC)}:{line}: {name} imports {target}"
            root = target.split(".")[0]
            for package, allowed in ALLOWED_THIRD_PARTY.items():
                if (name == package or name.startswith(package + ".")) and root != "colm":
                    if root not in STDLIB and root not in allowed and root != "__future__":
                        out.append(f"{where} (only {sorted(allowed)} and the standard library)")
            for package, allowed_colm in ALLOWED_COLM.items():
                if (name == package or name.startswith(package + ".")) and root == "colm":
                    if not any(target == a or target.startswith(a + ".") for a in allowed_colm):
                        out.append(f"{where} (only {allowed_colm})")
            for package, forbidden in FORBIDDEN_COLM.items():
                if name == package or name.startswith(package + "."):
                    if any(target == f or target.startswith(f + ".") for f in forbidden):
                        out.append(f"{where} (never {forbidden})")
            if not (name == CLI or name.startswith(CLI + ".")) and (target == CLI or target.startswith(CLI + ".")):
                out.append(f"{where} (only {CLI} itself imports {CLI})")
    return out


def test_each_package_imports_only_what_its_layer_allows():
    assert violations() == []


def test_every_layer_rule_is_stated_in_its_package_docstring():
    for package in list(ALLOWED_COLM) + list(FORBIDDEN_COLM):
        doc = ast.get_docstring(ast.parse(MODULES[package].read_text())) or ""
        assert "Imports:" in doc, f"{package}/__init__.py does not state its import rule ('Imports: ...')"


def test_no_import_cycle_between_modules():
    graph = {name: {t for t, _, top in imports(path) if top and t in MODULES and t != name}
             for name, path in MODULES.items()}
    # a package's __init__ is imported before its submodules: an edge sub -> package is not a cycle
    # by itself, so only module-to-module edges outside a module's own parent packages count
    for name in graph:
        graph[name] = {t for t in graph[name] if not name.startswith(t + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := dfs(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := dfs(node)):
            pytest.fail("import cycle: " + " -> ".join(cycle))


@pytest.mark.parametrize("package", ["compare", "training", "data", ""])
def test_the_scan_sees_a_library_module_importing_the_command_line(package):
    # colm.compare.run used to import colm.cli.train.make_trainer (function-local imports count)
    folder = SRC / "colm" / package if package else SRC / "colm"
    fake = folder / "_layer_probe.py"
    fake.write_text("def f():\n    from colm.cli.train import make_trainer\n")
    name = ".".join(p for p in ("colm", package, "_layer_probe") if p)
    try:
        MODULES[name] = fake
        assert any(f"{name} imports colm.cli.train" in v for v in violations())
    finally:
        del MODULES[name]
        fake.unlink()


def test_the_scan_sees_a_violation():
    # the rule can fail: a selection module importing transformers is reported
    fake = SRC / "colm" / "selection" / "_layer_probe.py"
    fake.write_text("import transformers\n")
    try:
        MODULES["colm.selection._layer_probe"] = fake
        assert any("_layer_probe" in v for v in violations())
    finally:
        del MODULES["colm.selection._layer_probe"]
        fake.unlink()


BLOCKER = textwrap.dedent('''
    import sys
    class _Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("transformers", "peft", "datasets", "accelerate", "trl"):
                raise ImportError(f"{name} is hidden by the test")
            return None
    sys.meta_path.insert(0, _Blocker())
''')


def test_selection_imports_and_selects_without_transformers(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(BLOCKER)
    script = textwrap.dedent('''
        import torch
        try:
            import transformers  # noqa: F401
        except ImportError:
            pass
        else:
            raise SystemExit("the blocker did not hide transformers")
        from colm import CoresetConfig, CoresetSelector
        from colm.selection.state import load_selector_state, save_selector_state
        feats = torch.randn(12, 16, generator=torch.Generator().manual_seed(0))
        sources = ["a"] * 6 + ["b"] * 4 + ["c"] * 2
        for method in ("random", "facility_location", "mean_match", "pps"):
            sel = CoresetSelector(CoresetConfig(within_source=method), {"a": 60, "b": 40, "c": 2})
            s = sel.select(feats, sources, 6)
            assert s.indices.numel() == 6
        import sys
        bad = sorted(m for m in sys.modules if m.split(".")[0] in ("transformers", "peft", "datasets"))
        assert not bad, bad
        print("ok")
    ''')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(SRC)])}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def test_the_command_line_stays_a_thin_layer():
    # Issue 27: cli/ parses, locks, identifies runs, shows progress and writes reports; the
    # library work lives in the layers below, so cli/ stays under a fifth of the code and no
    # command's body grows past 60 lines.
    lines = {name: len(path.read_text().splitlines()) for name, path in MODULES.items()}
    cli = sum(n for name, n in lines.items() if name == CLI or name.startswith(CLI + "."))
    assert cli / sum(lines.values()) < 0.20, f"colm/cli is {cli / sum(lines.values()):.1%} of src/colm"
    bodies = ("run", "_train", "_compare", "_demo")
    for name in ("colm.cli.train", "colm.cli.compare", "colm.cli.demo", "colm.cli.evaluate"):
        for node in ast.walk(ast.parse(MODULES[name].read_text())):
            if isinstance(node, ast.FunctionDef) and node.name in bodies:
                length = node.end_lineno - node.lineno + 1
                assert length < 60, f"{name}.{node.name} is {length} lines"
