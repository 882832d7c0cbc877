"""Every notebook runs headless, top to bottom, with small settings; the quickstart's report reads well
in a real browser."""

import os
import re
from pathlib import Path

import nbformat
import pytest

from rlhflab.demo import CHROMIUM, QUICK_SETTINGS, run_quickstart
from rlhflab.notebook import run_notebook

NOTEBOOKS = Path(__file__).parent.parent / "notebooks"
SHARED = Path(__file__).parent.parent.parent / "shared"
SMALL = {  # overrides of each notebook's parameters cell
    "00_quickstart.ipynb": QUICK_SETTINGS,
    "05_dpo_best_of_n.ipynb": "N_DEMONSTRATIONS = 64\nLABELS = 96\nPPO_STEPS = 4\nILQL_STEPS = 8\nBEST_OF = (1, 4)\n"
                              "ACTIVE_BATCHES = 1\nN_HELDOUT = 24\nHH_PAIRS = 32\nHH_HELDOUT = 32\nHH_STEPS = 4\n"
                              f"HH_RLHF = {str(SHARED / 'data/hh-rlhf/harmless-base-test.jsonl.gz')!r}",
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
                               "reward-model agreement with gold per label spent",
                               "HH-RLHF pairs: its Q-values rank chosen" if SHARED.exists() else "skipping ILQL"],
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
                               "runs/05_compare/methods/round_1/kto/adapter_model.safetensors",
                               "runs/05_compare/methods/round_1/ilql/ilql_heads.safetensors",
                               "runs/05_compare/methods/ratings/kto/metrics.html",
                               "runs/05_compare/active/active/round_1/reward/adapter_model.safetensors"],
    "01_sft.ipynb": ["runs/01_sft/adapter_model.safetensors"],
    "02_label.ipynb": ["labels/02_label.db", "labels/02_label.jsonl"],
    "06_team_labeling.ipynb": ["team_labels.db"],
    "03_reward.ipynb": ["runs/03_reward/reward/adapter_model.safetensors", "runs/03_reward/labels.db"],
    "04_ppo.ipynb": ["runs/04_ppo/ppo/checkpoint/adapter_model.safetensors", "runs/04_ppo/ppo/metrics.html"],
}


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    """The quickstart run the way `make demo --quick` runs it: (its directory, run_quickstart's summary)."""
    workdir = tmp_path_factory.mktemp("quickstart")
    return workdir, run_quickstart(workdir, quick=True)


def test_every_notebook_has_small_settings():
    assert {p.name for p in NOTEBOOKS.glob("*.ipynb")} == set(SMALL) == set(EXPECTED_TEXT) == set(EXPECTED_FILES)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_notebook_runs(name, tmp_path, request):
    if name == "00_quickstart.ipynb":
        tmp_path = request.getfixturevalue("quickstart")[0]
        notebook = nbformat.read(tmp_path / "quickstart.ipynb", as_version=4)
    else:
        notebook = run_notebook(NOTEBOOKS / name, tmp_path, SMALL[name])
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


def test_report_and_ppo_dashboard_read_well_in_a_browser(quickstart):
    """The quickstart report opens with its summary sentence, every chart draws, no script fails, and
    `make demo` wrote a screenshot of each page."""
    if not Path(CHROMIUM).exists() and os.environ.get("CI") != "true":
        pytest.skip("no /usr/bin/chromium (apt-get install chromium) and not in CI")
    from playwright.sync_api import sync_playwright

    workdir, summary = quickstart
    report, dashboard = workdir / "quickstart.html", workdir / "runs" / "ppo" / "metrics.html"
    assert report.stat().st_size < 5 * 2**20
    assert summary["screenshots"] == [str(workdir / "quickstart.png"), str(workdir / "ppo.png")]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page()
        problems = []
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.on("console", lambda message: message.type == "error" and problems.append(message.text))
        # report: win-rate against KL, the rounds, the leaderboard and PPO's 4 panels; dashboard: the 4 panels
        for html_path, figures in ((report, 7), (dashboard, 4)):
            page.goto(html_path.as_uri())
            page.wait_for_selector(".plotly-graph-div .main-svg")
            assert page.locator(".plotly-graph-div").count() == figures, html_path
            assert page.locator(".plotly-graph-div:not(:has(.main-svg))").count() == 0, f"{html_path}: undrawn chart"
        page.goto(report.as_uri())
        sentence = page.locator("p.summary").inner_text()
        browser.close()
    assert re.fullmatch(r"2 rounds, [\d,]+ labels: gold win-rate against SFT (rose|fell) from 50% to \d+% at "
                        r"[\d.]+ nats of KL; the reward model agreed with gold on \d+% of pairs\.", sentence), sentence
    assert not problems, problems


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


def test_summary_never_reports_negative_kl():
    """Seen in a quick run: k1 on 24 samples gave -0.03 nats, and the report said '-0.0 nats of KL'."""
    import pandas as pd

    from rlhflab.report import summary

    table = pd.DataFrame([{"round": 1, "labels": 95, "gold/win_rate_vs_sft": 0.54, "kl/to_sft": -0.03,
                           "reward/gold_agreement": 0.71}])
    assert summary(table) == ("1 round, 95 labels: gold win-rate against SFT rose from 50% to 54% at 0.0 nats of "
                              "KL; the reward model agreed with gold on 71% of pairs.")
