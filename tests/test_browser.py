"""The labeling widget in a real browser: JupyterLab on localhost, headless Debian Chromium via Playwright.

One server serves every check. One page labels by click and by keyboard, with undo, flags and rationale,
checks the exact events in the store, and shows XSS payloads in model text (and in the guidelines) that
must do nothing. A second page uses the playground on the tiny policy: rates replies thumbs up and down,
then compares two, and the store holds exactly those events.
"""

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from lab_session import CHROMIUM, CHROMIUM_ARGS, LABELER, JupyterLab  # noqa: E402

from rlhflab.exports import kto_rows, ratings  # noqa: E402
from rlhflab.records import Item  # noqa: E402
from rlhflab.store import LabelStore  # noqa: E402

if not Path(CHROMIUM).exists() and os.environ.get("CI") != "true":
    pytest.skip("no /usr/bin/chromium (apt-get install chromium) and not in CI", allow_module_level=True)

# Each would set window.__pwned or open a dialog if the page ever ran it.
PAYLOADS = [
    '<script>window.__pwned = "script"; alert("script")</script>',
    '<img src="x" onerror="window.__pwned = \'img\'; alert(\'img\')">',
    '<a href="javascript:window.__pwned=\'link\';alert(\'link\')">click me</a>',
    "[click me](javascript:window.__pwned='md';alert('md'))",
    '<svg onload="window.__pwned=\'svg\'"></svg>',
]
GUIDELINES = "# Guidelines\n\nPrefer **helpful** answers.\n\n" + "\n\n".join(PAYLOADS)
ITEMS = [Item(f"Question {i}: what does {PAYLOADS[i % 5]} do?",
              (f"Reply {i} one {PAYLOADS[(i + 1) % 5]}", f"Reply {i} two {PAYLOADS[(i + 2) % 5]}"), ("p1", "p2"))
         for i in range(8)]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """(JupyterLab, browser, workdir): one server and one Chromium for every page of this module."""
    from playwright.sync_api import sync_playwright

    workdir = tmp_path_factory.mktemp("browser")
    with JupyterLab(workdir) as server, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield server, browser, workdir
        browser.close()


def open_labeler(lab, name: str, store_path: Path, arguments: str):
    """A page whose notebook runs `PairwiseLabeler(LabelStore(store_path), 'browser', <arguments>)`."""
    server, browser, _ = lab
    cells = ["from rlhflab import load_policy\n"
             "from rlhflab.store import LabelStore\n"
             "from rlhflab.labeling import PairwiseLabeler, LabelerConfig",
             f"labeler = PairwiseLabeler(LabelStore({str(store_path)!r}), 'browser', {arguments})\nlabeler"]
    page = server.open_notebook(name, cells, browser)
    page.dialogs = []
    page.on("dialog", lambda dialog: (page.dialogs.append(dialog.message), dialog.dismiss()))
    return page


@pytest.fixture(scope="module")
def session(lab):
    """(page, store path): the notebook has run and the labeler shows its first item."""
    store_path = lab[2] / "labels.db"
    LabelStore(store_path).add_items(ITEMS)
    page = open_labeler(lab, "label.ipynb", store_path, f"LabelerConfig(seed=0, guidelines={GUIDELINES!r})")
    page.wait_for_selector(LABELER)
    yield page, store_path
    page.close()


@pytest.fixture(scope="module")
def playground(lab):
    """(page, store path): a labeler with a playground on the tiny policy, over an empty store."""
    store_path = lab[2] / "playground.db"
    page = open_labeler(lab, "playground.ipynb", store_path, "LabelerConfig(seed=0), playground=[load_policy('tiny')]")
    page.wait_for_selector(".rlhflab-labeler .rl-playground:visible")
    yield page, store_path
    page.close()


def shown(page) -> tuple[str, str]:
    """(item_id, left response text) on screen."""
    root = page.locator(".rlhflab-labeler")
    return root.get_attribute("data-item-id"), root.locator(".rl-response").nth(0).locator(".rl-text").inner_text()


def act(page, do) -> tuple[str, str]:
    """Run `do()`, wait until the next item is on screen (so the label is committed); return what was acted on."""
    before = shown(page)
    do()
    page.wait_for_function(f"() => document.querySelector('.rlhflab-labeler').dataset.itemId !== {before[0]!r}")
    return before


def stored_letter(item_id: str, left_text: str, side: str) -> str:
    """The stored response letter ('a' / 'b') of the response shown on `side`."""
    item = next(i for i in ITEMS if i.item_id == item_id)
    left = item.responses.index(left_text)
    return "ab"[left if side == "left" else 1 - left]


def test_label_by_click_and_keyboard_undo_and_the_store_holds_exactly_those_events(session):
    page, store_path = session
    root = page.locator(".rlhflab-labeler")
    button = lambda name: root.get_by_role("button", name=name, exact=True)  # noqa: E731
    expected = []

    item, left = act(page, lambda: button("A is better").click())
    expected.append((item, "label", stored_letter(item, left, "left"), "clearly", None, None))
    button("3 much").click()
    item, left = act(page, lambda: button("B is better").click())
    expected.append((item, "label", stored_letter(item, left, "right"), "much", None, None))

    root.locator(".rl-prompt").click()  # focus the widget, as a person would, then keys only
    item, _ = act(page, lambda: page.keyboard.press("t"))
    expected.append((item, "label", "tie", None, None, None))
    page.keyboard.press("1")
    item, left = act(page, lambda: page.keyboard.press("ArrowLeft"))
    expected.append((item, "label", stored_letter(item, left, "left"), "slightly", None, None))
    undone_item, _ = act(page, lambda: page.keyboard.press("x"))
    expected.append((undone_item, "label", "both_bad", None, None, None))

    act(page, lambda: page.keyboard.press("u"))  # undo: the both-bad item comes back
    assert shown(page)[0] == undone_item
    expected.append((undone_item, "undo", None, None, None, None))
    root.locator(".rl-response").nth(1).locator("input[data-flag='false fact']").check()
    root.locator(".rl-rationale").fill("neither answers, right one invents a fact")
    item, left = act(page, lambda: button("B is better").click())
    expected.append((item, "label", stored_letter(item, left, "right"), "clearly",
                     {stored_letter(item, left, "right"): ["false fact"]}, "neither answers, right one invents a fact"))
    root.locator(".rl-prompt").click()
    item, _ = act(page, lambda: page.keyboard.press("s"))
    expected.append((item, "skip", None, None, None, None))

    events = LabelStore(store_path).events()
    assert [(e["item_id"], e["action"], e["choice"], e["strength"], e["flags"], e["rationale"]) for e in events] == expected
    assert all(e["annotator"] == "browser" and len(e["shown_order"] or [0, 1]) == 2 for e in events)
    assert events[5]["target"] == events[4]["event_id"]
    assert len({e["session"] for e in events}) == 1
    assert root.locator(".rl-progress").inner_text().startswith("labelled 6 · remaining 2")


def test_model_text_and_guidelines_payloads_run_nothing(session):
    page, _ = session
    root = page.locator(".rlhflab-labeler")
    root.locator(".rl-guidelines summary").click()
    for text in root.locator(".rl-text").all():  # every payload is shown as the literal text it is
        text.hover()
        text.click()
    page.wait_for_timeout(300)  # give an onerror or onload handler the chance it must not take
    assert page.evaluate("() => window.__pwned") is None
    assert page.dialogs == []
    assert root.locator("script, img, svg, iframe, [onerror], [onload]").count() == 0
    assert root.locator("a[href^='javascript']").count() == 0
    prompt = root.locator(".rl-prompt .rl-text").inner_text()
    assert any(p in prompt for p in PAYLOADS)
    assert root.locator(".rl-guidelines-body strong").inner_text() == "helpful"  # markdown still renders


def ask(page, prompt: str, replies: int):
    """Type a prompt into the playground, generate, and wait until its `replies` replies are on screen."""
    root = page.locator(".rlhflab-labeler")
    root.locator(".rl-prompt-input").fill(prompt)
    root.get_by_role("button", name="Generate one reply" if replies == 1 else "Generate two replies").click()
    page.wait_for_function("() => document.querySelector('.rlhflab-labeler').dataset.itemId !== ''")
    assert root.locator(".rl-response").count() == replies
    return root.get_attribute("data-item-id")


def test_playground_rates_replies_thumbs_up_and_down_and_still_compares_two(playground):
    from playwright.sync_api import expect

    page, store_path = playground
    root = page.locator(".rlhflab-labeler")
    button = lambda name: root.get_by_role("button", name=name, exact=True)  # noqa: E731
    saved = "() => document.querySelector('.rlhflab-labeler').dataset.itemId === ''"  # nothing else to label

    button("rate one").click()
    assert button("rate one").get_attribute("aria-pressed") == "true"
    liked = ask(page, "What sound does the cow make?", replies=1)
    assert root.get_by_role("button", name="A is better").count() == 0  # a lone reply is rated, not compared
    root.locator(".rl-rationale").fill("it says moo")
    button("👍 good").click()
    page.wait_for_function(saved)
    expect(root.locator(".rl-history-summary").first).to_have_text("rated up")  # in the folded history list
    disliked = ask(page, f"What does the bee make? {PAYLOADS[1]}", replies=1)  # typed text is shown as text too
    assert PAYLOADS[1] in root.locator(".rl-prompt .rl-text").inner_text()
    root.locator(".rl-rationale").fill("not about bees")
    button("👎 bad").click()
    page.wait_for_function(saved)

    button("compare two").click()
    compared = ask(page, "Where does the owl live?", replies=2)
    button("A is better").click()
    page.wait_for_function(saved)

    store = LabelStore(store_path)
    events = store.events()
    assert [(e["item_id"], e["action"], e["choice"], e["strength"], e["rationale"]) for e in events] == [
        (liked, "label", "up", None, "it says moo"), (disliked, "label", "down", None, "not about bees"),
        (compared, "label", "ab"[events[2]["shown_order"][0]], "clearly", None)]
    items = store.items()
    assert [len(items[i].responses) for i in (liked, disliked, compared)] == [1, 1, 2]
    assert [(r["item_id"], r["label"]) for r in ratings(store)] == [(liked, True), (disliked, False)]
    chosen = items[compared].responses[events[2]["shown_order"][0]]
    assert [(r["completion"], r["label"], r["source"]) for r in kto_rows(store)] == [
        (items[liked].responses[0], True, "rating"), (items[disliked].responses[0], False, "rating"),
        (chosen, True, "pair"), (items[compared].responses[events[2]["shown_order"][1]], False, "pair")]
    assert page.evaluate("() => window.__pwned") is None and page.dialogs == []
    assert root.locator("img, script, [onerror]").count() == 0
