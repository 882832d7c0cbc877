"""The layout docs/architecture.md promises: the layers are the folders of rlhflab/, each imports only the
layers below it (so the truth imports no trainer and nothing imports the lab), training code never loads the widgets,
there are no import cycles, and the module and metric tables of docs/ match the code."""

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
PACKAGE = ROOT / "rlhflab"
# Bottom to top: a layer may import the layers before it, never those after it. The truth labels through the
# store, the trainers load the truth's shipped model and score with its gold annotator, the lab runs them all.
LAYERS = ("rlhflab.labeling", "rlhflab.tiny", "rlhflab.trainers", "rlhflab.lab")
WIDGET = "rlhflab.labeling.widget"  # the one module that imports anywidget


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in PACKAGE.rglob("*.py")}


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def imports_of(name: str, path: Path) -> set[str]:
    """The rlhflab modules `path` imports, anywhere in the file (function-level imports too)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("rlhflab")}
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            target = ".".join(x for x in (base, node.module or "") if x)
            if not target.startswith("rlhflab"):
                continue
            found.add(target)
            found |= {f"{target}.{alias.name}" for alias in node.names if f"{target}.{alias.name}" in modules()}
    return {m for m in found if m in modules() and m != name}


def import_graph() -> dict[str, set[str]]:
    return {name: imports_of(name, path) for name, path in modules().items()}


def test_the_top_of_the_package_holds_only_its_init_and_the_layers():
    top = {path.name for path in PACKAGE.iterdir() if path.name != "__pycache__"}
    assert top == {"__init__.py"} | {layer.split(".")[1] for layer in LAYERS}, "a module belongs in a layer's folder"
    for layer in LAYERS:
        docstring = ast.get_docstring(ast.parse((PACKAGE / layer.split(".")[1] / "__init__.py").read_text()))
        assert docstring and "import" in docstring, f"{layer}/__init__.py should say what the layer owns and imports"


@pytest.mark.parametrize("layer", LAYERS)
def test_each_layer_imports_only_the_layers_below_it(layer):
    """So the truth (`rlhflab.tiny`) imports no trainer and nothing of the lab, the labeling layer imports no
    trainer, no truth and no lab (a reward model or a policy reaches it as an argument), and the trainers
    import nothing of the lab."""
    above = LAYERS[LAYERS.index(layer) + 1:]
    for name, targets in import_graph().items():
        if within(name, layer):
            upward = sorted(t for t in targets if any(within(t, other) for other in above))
            assert not upward, f"{name} imports {upward}, a layer above {layer}"


def test_the_trainers_never_import_the_widgets_and_nothing_imports_the_build_script():
    for name, targets in import_graph().items():
        if within(name, "rlhflab.trainers"):
            assert WIDGET not in targets, f"{name} imports {WIDGET}"
        assert "rlhflab.tiny.build" not in targets, f"{name} imports the tiny model's build script"


def test_the_stages_and_the_loop_take_any_task_and_import_nothing_of_the_tiny_world():
    """Issue 27: every stage took `world, gold`. The tiny world is one task (`rlhflab.tiny.task`), so the
    orchestration imports nothing from `rlhflab.tiny`, anywhere in the file."""
    graph = import_graph()
    for name in ("rlhflab.lab.stages", "rlhflab.lab.loop", "rlhflab.lab.task"):
        tiny = sorted(t for t in graph[name] if within(t, "rlhflab.tiny"))
        assert not tiny, f"{name} imports {tiny}: take a task instead"


def test_no_import_cycles():
    graph = import_graph()
    for name in graph:  # a package's own __init__ runs before its submodules: not an edge of the flow
        graph[name] = {t for t in graph[name] if not name.startswith(t + ".")}
    done, path = set(), []

    def visit(node):
        if node in path:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(node):] + [node]))
        if node in done:
            return
        path.append(node)
        for target in sorted(graph[node]):
            visit(target)
        path.pop()
        done.add(node)

    for name in sorted(graph):
        visit(name)


def test_only_the_widget_module_imports_anywidget():
    """Every other module, imported whole (the package's `__init__` loads the widgets lazily), leaves anywidget
    unloaded; and no other module names it in an import."""
    for name, path in modules().items():
        if name == WIDGET:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            named = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            assert not any(within(n, "anywidget") for n in named), f"{name} imports anywidget"
    others = sorted(name for name in modules() if name != WIDGET)
    script = f"import sys; import {', '.join(others)}; print('anywidget' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_module_table_matches_the_tree_and_every_module_says_what_it_owns():
    """docs/architecture.md: one row per module, its layer its folder; the data packages that pyproject.toml
    maps into the package (the notebooks, the widgets' front end) are the 'assets'."""
    page = (ROOT / "docs" / "architecture.md").read_text()
    section = page.split("## Modules\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (\w+) \| `(rlhflab[\w.]*)` \|", section, flags=re.M)
    listed = {module: layer for layer, module in rows}
    assert len(listed) == len(rows), "a module is listed twice"
    shipped = {name: name.split(".")[1] for name, path in modules().items() if path.name != "__init__.py"}
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    assert listed == shipped | {package: "assets" for package in data}
    for name, path in modules().items():
        docstring = ast.get_docstring(ast.parse(path.read_text()))
        assert docstring and len(docstring.split()) >= 5, f"{name} has no docstring saying what it owns"


def test_metric_table_is_the_vocabulary():
    from rlhflab.lab.stages import METRICS

    section = (ROOT / "docs" / "metrics.md").read_text()
    rows = dict(re.findall(r"^\| `([\w/]+)` \| (.+) \|$", section, flags=re.M))
    assert rows == METRICS


def test_every_module_says_what_a_user_may_touch():
    """Issue 28: only the root had `__all__`, and more than 200 names looked public. Each module now lists its
    API in `__all__`: names it defines, none private; the rest is the module's own business."""
    for name, path in modules().items():
        if path.name == "__init__.py":
            continue
        tree = ast.parse(path.read_text())
        listed = [node for node in tree.body if isinstance(node, ast.Assign)
                  and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets)]
        assert len(listed) == 1, f"{name} has no __all__"
        exported = ast.literal_eval(listed[0].value)
        defined = {n.id for node in tree.body for target in getattr(node, "targets", [getattr(node, "target", None)])
                   if target is not None for n in ast.walk(target) if isinstance(n, ast.Name)}
        defined |= {node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
        assert exported and not [n for n in exported if n.startswith("_") or n not in defined], name


def test_modules_and_the_label_store_stay_readable_in_one_sitting():
    """Issue 28: store.py was 1,036 lines with a 601-line LabelStore of 52 methods. Each module now stays within
    600 lines, and LabelStore, which mixes in the log, the views and the queue, within 300."""
    lengths = {name: len(path.read_text().splitlines()) for name, path in modules().items()}
    assert {name: n for name, n in lengths.items() if n > 600} == {}
    tree = ast.parse((PACKAGE / "labeling" / "store" / "label_store.py").read_text())
    [store] = [node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "LabelStore"]
    assert store.end_lineno - store.lineno + 1 <= 300
