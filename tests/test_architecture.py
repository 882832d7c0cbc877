"""The layout the README promises: data flows one way, the truth imports no trainer, training code
never loads the widgets, no import cycles, and the README's module and metric tables match the code."""

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent
PACKAGE = ROOT / "rlhflab"
TRAINERS = {"rlhflab.trainers.sft", "rlhflab.trainers.reward", "rlhflab.trainers.ppo", "rlhflab.trainers.dpo",
            "rlhflab.trainers.kto", "rlhflab.trainers.ilql", "rlhflab.trainers.critic_free",
            "rlhflab.trainers.reward_functions", "rlhflab.trainers.best_of_n", "rlhflab.trainers.training",
            "rlhflab.lab.stages", "rlhflab.lab.loop", "rlhflab.trainers.live"}
ORCHESTRATION = ["rlhflab.lab.stages", "rlhflab.lab.loop", "rlhflab.lab.report", "rlhflab.lab.demo"]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in PACKAGE.rglob("*.py")}


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


def test_the_truth_imports_no_trainer_and_models_do_not_import_the_build_script():
    graph = {name: imports_of(name, path) for name, path in modules().items()}
    for name, targets in graph.items():
        if name.startswith("rlhflab.tiny"):
            assert not targets & TRAINERS, f"{name} imports {targets & TRAINERS}"
    assert "rlhflab.tiny.build" not in graph["rlhflab.trainers.models"]


def test_the_stages_and_the_loop_take_any_task_and_import_nothing_of_the_tiny_world():
    """Issue 27: every stage took `world, gold`. The tiny world is one task (`rlhflab.tiny.task`), so the
    orchestration imports nothing from `rlhflab.tiny`, anywhere in the file."""
    graph = {name: imports_of(name, path) for name, path in modules().items()}
    for name in ("rlhflab.lab.stages", "rlhflab.lab.loop", "rlhflab.lab.task"):
        tiny = sorted(t for t in graph[name] if t == "rlhflab.tiny" or t.startswith("rlhflab.tiny."))
        assert not tiny, f"{name} imports {tiny}: take a task instead"


def test_no_import_cycles():
    graph = {name: imports_of(name, path) for name, path in modules().items()}
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


def test_orchestration_never_loads_the_widgets():
    script = f"import sys; import {', '.join(ORCHESTRATION)}; print('anywidget' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_readme_module_table_matches_the_tree_and_every_module_says_what_it_owns():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Modules\n", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| \w+ \| `(rlhflab[\w.]*)` \|", section, flags=re.M))
    shipped = {name for name, path in modules().items() if path.name != "__init__.py"}
    assert listed == shipped | {"rlhflab.notebooks", "rlhflab.widgets"}
    for name, path in modules().items():
        docstring = ast.get_docstring(ast.parse(path.read_text()))
        assert docstring and len(docstring.split()) >= 5, f"{name} has no docstring saying what it owns"


def test_readme_metric_table_is_the_vocabulary():
    from rlhflab.lab.stages import METRICS

    section = (ROOT / "README.md").read_text().split("## Metrics\n", 1)[1].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| `([\w/]+)` \| (.+) \|$", section, flags=re.M))
    assert rows == METRICS
