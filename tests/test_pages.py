"""`make pages`: the executed notebooks as HTML pages small enough to open, which still show the results."""

import copy

import nbformat

from rlhflab.lab.notebook import LAST_PICTURES, PLOTLY_JS, WIDGET_STATE, WIDGET_VIEW, static_page

MARKUP = "<img src=x onerror=alert(1)>"  # what a model could answer; the page must show it, not run it


def test_quickstart_page_is_small_keeps_the_results_and_escapes_model_text(quickstart, tmp_path):
    """The executed quickstart (26-36 MB with its widget state) as a page under 5 MB: the notebook's own
    lines, the live plots as charts and the tables are there; no widget state; model text stays text."""
    workdir, _ = quickstart
    executed = nbformat.read(workdir / "quickstart.ipynb", as_version=4)
    state = executed.metadata["widgets"][WIDGET_STATE]["state"]
    plots = sum(m["state"].get("_anywidget_id", "").startswith("plotly.") for m in state.values())
    tampered = copy.deepcopy(executed)  # model text in the places it reaches a page: printed, and in a plot
    printed = next(o for c in tampered.cells for o in c.get("outputs", []) if o.output_type == "stream")
    printed["text"] += f"a sample: {MARKUP}\n"
    plot = next(m for m in tampered.metadata["widgets"][WIDGET_STATE]["state"].values()
                if m["state"].get("_anywidget_id", "").startswith("plotly."))
    plot["state"]["_widget_data"][0]["text"] = [MARKUP]

    page = static_page(tampered, tmp_path / "00_quickstart.html")
    text = page.read_text()
    assert page.stat().st_size < 5 * 2**20 and (tmp_path / PLOTLY_JS).is_file()
    assert WIDGET_STATE not in text and WIDGET_VIEW not in text
    for line in ("SFT done", "pairs queued for round 1", "rounds in", "report written", "gold win-rate"):
        assert line in text
    assert text.count("class=\"plotly-graph-div\"") >= plots > 0  # every live plot, as a static chart
    assert "rlhflab.labeling.widget.PairwiseLabeler: an interactive widget; run the notebook to use it" in text
    assert MARKUP not in text and "a sample: &lt;img src=x onerror=alert(1)&gt;" in text


def test_last_pictures_resends_what_a_live_plot_drew_after_it_was_shown():
    """A FigureWidget's saved state is its figure at display; later points travel as deltas that nbclient does
    not keep. `write_pages` runs LAST_PICTURES at the end of each notebook so the page shows the last picture."""
    import plotly.graph_objects as go

    live = go.FigureWidget(go.Scatter(x=[1], y=[0.5]))
    with live.batch_update():
        live.data[0].x, live.data[0].y = [1, 2], [0.5, 0.7]
    assert live._widget_data[0]["x"] == [1]  # what the saved state would show
    exec(LAST_PICTURES, {})
    assert live._widget_data[0]["x"] == [1, 2] and live._widget_data[0]["y"] == [0.5, 0.7]
