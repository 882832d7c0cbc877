"""Every notebook runs headless, top to bottom, with small settings."""

from pathlib import Path

import nbformat
import pytest

from rlhflab.demo import QUICK_SETTINGS, run_quickstart
from rlhflab.notebook import run_notebook

NOTEBOOKS = Path(__file__).parent.parent / "notebooks"
SHARED = Path(__file__).parent.parent.parent / "shared"
SMALL = {  # overrides of each notebook's parameters cell
    "00_quickstart.ipynb": QUICK_SETTINGS,
    "05_dpo_best_of_n.ipynb": "N_DEMONSTRATIONS = 64\nLABELS = 96\nPPO_STEPS = 4\nBEST_OF = (1, 4)\n"
                              "ACTIVE_BATCHES = 2\nN_HELDOUT = 24",
    "01_sft.ipynb": "N_DEMONSTRATIONS = 64\nN_HELDOUT = 8\nEPOCHS = 1.0",
    "02_label.ipynb": f"N_ITEMS = 24\nN_GOLD = 4\nN_GENERATED = 4\nMAX_NEW_TOKENS = 24\n"
                      f"HH_RLHF = {str(SHARED / 'data/hh-rlhf/harmless-base-test.jsonl.gz')!r}",
    "06_team_labeling.ipynb": "N_ITEMS = 20\nN_GOLD = 4",
    "03_reward.ipynb": "N_DEMONSTRATIONS = 32\nN_WORLD_PAIRS = 40\nN_POLICY_PAIRS = 40\nEPOCHS = 1.0\nN_HELDOUT = 16",
    "04_ppo.ipynb": "N_DEMONSTRATIONS = 32\nN_PAIRS = 40\nPPO_STEPS = 3\nOVEROPTIMIZE_STEPS = 3\nN_HELDOUT = 16",
}
EXPECTED_TEXT = {  # printed by each notebook when it worked
    "00_quickstart.ipynb": ["SFT done", "pairs queued for round 1", "rounds in", "report written"],
    "05_dpo_best_of_n.ipynb": ["every method learned from the same", "highest gold win-rate against SFT",
                               "reward-model agreement with gold per label spent"],
    "01_sft.ipynb": ["mean gold score: base"],
    "02_label.ipynb": ["raw agreement", "position bias: left won", "exported",
                       "HH-RLHF comparisons ready" if SHARED.exists() else "skipping the import"],
    "06_team_labeling.ipynb": ["team progress:", "accuracy on calibration items:", "Fleiss' kappa"],
    "03_reward.ipynb": ["decided comparisons", "agreement with the gold annotator on held-out pairs"],
    "04_ppo.ipynb": ["reward model agrees with gold", "gold win-rate against SFT", "gold peaked around step"],
}
EXPECTED_FILES = {  # written by each notebook, relative to where it runs
    "00_quickstart.ipynb": ["quickstart.html", "quickstart.ipynb", "runs/rounds.jsonl"],  # through `make demo`
    "05_dpo_best_of_n.ipynb": ["runs/05_compare/methods/round_1/dpo/adapter_model.safetensors",
                               "runs/05_compare/active/active/round_2/reward/adapter_model.safetensors"],
    "01_sft.ipynb": ["runs/01_sft/adapter_model.safetensors"],
    "02_label.ipynb": ["labels/02_label.db", "labels/02_label.jsonl"],
    "06_team_labeling.ipynb": ["team_labels.db"],
    "03_reward.ipynb": ["runs/03_reward/reward/adapter_model.safetensors", "runs/03_reward/labels.db"],
    "04_ppo.ipynb": ["runs/04_ppo/ppo/checkpoint/adapter_model.safetensors", "runs/04_ppo/ppo/metrics.html"],
}


def run(name: str, workdir: Path) -> nbformat.NotebookNode:
    if name == "00_quickstart.ipynb":  # the quickstart runs the way `make demo` runs it, at quick sizes
        run_quickstart(workdir, quick=True)
        return nbformat.read(workdir / "quickstart.ipynb", as_version=4)
    return run_notebook(NOTEBOOKS / name, workdir, SMALL[name])


def test_every_notebook_has_small_settings():
    assert {p.name for p in NOTEBOOKS.glob("*.ipynb")} == set(SMALL) == set(EXPECTED_TEXT) == set(EXPECTED_FILES)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_notebook_runs(name, tmp_path):
    notebook = run(name, tmp_path)
    errors = [o for c in notebook.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    text = "\n".join(o.get("text", "") for c in notebook.cells for o in c.get("outputs", []))
    for expected in EXPECTED_TEXT[name]:
        assert expected in text
    widgets = [o for c in notebook.cells for o in c.get("outputs", [])
               if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert widgets, "the notebook's widgets (live plot, labelers) did not render inside the kernel"
    for path in EXPECTED_FILES[name]:
        assert (tmp_path / path).exists()


def test_setup_says_which_model_device_and_precision(capsys, monkeypatch):
    from rlhflab.notebook import setup

    assert setup("tiny") == ("tiny", None)
    assert "model: tiny | device: cpu | precision: fp32 | weights: unquantized" in capsys.readouterr().out
    hub = "Qwen/Qwen2.5-0.5B-Instruct"
    assert setup(hub) == (hub, None)  # no silent swap for the tiny model; a clear note instead
    assert "comes from the hub and runs on the CPU" in capsys.readouterr().out
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("torch.cuda.get_device_capability", lambda *a: (7, 5))  # a T4
    assert setup(hub) == (hub, "4bit")
    assert "device: cuda:0 | precision: fp16 with loss scaling | weights: 4-bit nf4" in capsys.readouterr().out
