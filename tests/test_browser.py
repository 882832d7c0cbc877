"""The labeling widget in a real browser: JupyterLab on localhost, headless Debian Chromium via Playwright.

One server serves every check. One page labels by click and by keyboard, with undo, flags and rationale,
checks the exact events in the store, and shows XSS payloads in model text (and in the guidelines) that
must do nothing. The same page then checks that no label is given blind or lost: a held key and a double
click label one item, Undo has a button after the last item, an edit starts from the stored label (and
a second Edit click does not freeze the widget), and a busy kernel ends in a message and a Retry that
stores the label once, and a broken guidelines rule and a gold item's expected answer show as messages
(the answer as plain text). A second page uses the playground on the tiny policy: rates replies thumbs up and
down, then compares two, and the store holds exactly those events; then a background queue delivers an
item while the person types elsewhere, and the widget leaves their focus alone.
"""

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from lab_session import CHROMIUM, CHROMIUM_ARGS, LABELER, JupyterLab  # noqa: E402

from rlhflab.labeling.exports import kto_rows, ratings  # noqa: E402
from rlhflab.labeling.records import Item  # noqa: E402
from rlhflab.labeling.store import LabelStore  # noqa: E402

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
         for i in range(9)]


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
             "from rlhflab.labeling.store import LabelStore\n"
             "from rlhflab.labeling.widget import GuidelineExample, PairwiseLabeler, LabelerConfig",
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
    page = open_labeler(lab, "label.ipynb", store_path,
                        f"LabelerConfig(seed=0, guidelines={GUIDELINES!r}, reply_timeout_ms={REPLY_TIMEOUT_MS}, "
                        f"examples=[GuidelineExample(*{PAYLOADS[:4]!r})])")
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


REPLY_TIMEOUT_MS = 3000  # the session page's; the default 10 s would make the busy-kernel check slow
# The labeler shows an item that takes input (it has been on screen for min_view_ms), or shows none.
SETTLED = ("() => {{ const root = document.querySelector('.rlhflab-labeler'); return root.dataset.itemId !== {0!r} "
           "&& (root.dataset.itemId === '' || root.dataset.ready === 'true'); }}")


def run_in_kernel(page, code: str):
    """Run `code` in the page's kernel, as another cell would, and wait until it has run."""
    page.evaluate("async (code) => { await window.jupyterapp.shell.currentWidget.sessionContext.session.kernel"
                  ".requestExecute({code}).done; }", code)


def shown(page) -> tuple[str, str]:
    """(item_id, left response text) on screen; ('', '') when there is nothing left to label."""
    root = page.locator(".rlhflab-labeler")
    item_id = root.get_attribute("data-item-id")
    return item_id, item_id and root.locator(".rl-response").nth(0).locator(".rl-text").inner_text()


def act(page, do) -> tuple[str, str]:
    """Run `do()`, wait until the next item is on screen (so the label is committed) and takes input; return
    what was acted on."""
    before = shown(page)
    do()
    page.wait_for_function(SETTLED.format(before[0]))
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
    expected.append((item, "label", stored_letter(item, left, "left"), None, None, None))  # no strength given
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
    expected.append((item, "label", stored_letter(item, left, "right"), None,
                     {stored_letter(item, left, "right"): ["false fact"]}, "neither answers, right one invents a fact"))
    root.locator(".rl-prompt").click()
    item, _ = act(page, lambda: page.keyboard.press("s"))
    expected.append((item, "skip", None, None, None, None))

    events = LabelStore(store_path).events()
    assert [(e["item_id"], e["action"], e["choice"], e["strength"], e["flags"], e["rationale"])
            for e in events] == expected
    assert all(e["annotator"] == "browser" and len(e["shown_order"] or [0, 1]) == 2 for e in events)
    assert events[5]["target"] == events[4]["event_id"]
    assert len({e["session"] for e in events}) == 1
    assert root.locator(".rl-progress").inner_text().startswith("labelled 5 · skipped 1 · prompts flagged 0 · "
                                                                "remaining 3")


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
    example = root.locator(".rl-example")  # good and bad side by side, as the literal text they are
    assert [example.locator(f".rl-example-{side} .rl-text").inner_text() for side in ("good", "bad")] == PAYLOADS[1:3]
    assert example.locator(".rl-example-why").inner_text() == PAYLOADS[3]


def test_a_held_key_and_a_double_click_each_label_exactly_one_item(session):
    page, store_path = session
    root = page.locator(".rlhflab-labeler")
    root.locator(".rl-prompt").click()
    page.wait_for_function(SETTLED.format(""))
    count = len(LabelStore(store_path).events())
    held = shown(page)[0]
    page.keyboard.down("t")
    for _ in range(15):  # the key held for about half a second: keydown events with repeat=true
        page.wait_for_timeout(30)
        page.keyboard.down("t")
    page.keyboard.up("t")
    page.wait_for_function(SETTLED.format(held))
    page.wait_for_timeout(400)  # a second label would have had time to land
    assert [(e["item_id"], e["choice"]) for e in LabelStore(store_path).events()[count:]] == [(held, "tie")]

    clicked = shown(page)[0]
    both_bad = root.get_by_role("button", name="Both bad", exact=True)
    both_bad.click()
    page.wait_for_timeout(450)  # a slow double click (within the usual 500 ms): the next item is on screen by then
    box = both_bad.bounding_box()  # the next item's button; where the second click lands when the layout stays
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down(click_count=2)
    page.mouse.up(click_count=2)
    page.wait_for_function(SETTLED.format(clicked))
    page.wait_for_timeout(400)
    assert [(e["item_id"], e["choice"]) for e in LabelStore(store_path).events()[count + 1:]] == [(clicked, "both_bad")]


def test_undo_has_a_button_after_the_last_item(session):
    page, store_path = session
    root = page.locator(".rlhflab-labeler")
    act(page, lambda: root.get_by_role("button", name="Tie", exact=True).click())  # the last item
    last = LabelStore(store_path).events()[-1]
    assert root.get_attribute("data-item-id") == "" and "all done" in root.locator(".rl-status").inner_text()
    act(page, lambda: root.get_by_role("button", name="Undo", exact=True).click())
    assert shown(page)[0] == last["item_id"]
    act(page, lambda: root.get_by_role("button", name="Tie", exact=True).click())
    assert [(e["action"], e["target"], e["choice"]) for e in LabelStore(store_path).events()[-2:]] == [
        ("undo", last["event_id"], None), ("label", None, "tie")]


def test_an_edit_starts_from_the_stored_label_cancels_and_a_second_edit_click_does_not_freeze(session):
    page, store_path = session
    root = page.locator(".rlhflab-labeler")
    count = len(LabelStore(store_path).events())
    root.locator(".rl-history summary").click()
    edit = root.locator(".rl-history-entry").first.get_by_role("button", name="Edit")
    edit.click()
    page.wait_for_function(SETTLED.format(""))
    first = root.get_attribute("data-event-id")
    edit.click()  # again, on the same entry: the widget must answer and unlock
    page.wait_for_function(f"() => document.querySelector('.rlhflab-labeler').dataset.eventId !== {first!r}",
                           timeout=10_000)
    page.wait_for_function("() => !document.querySelector('.rlhflab-labeler').classList.contains('rl-pending')",
                           timeout=10_000)
    assert root.locator(".rl-earlier").inner_text() == "Tie"  # the stored answer, shown
    assert root.get_by_role("button", name="Skip", exact=True).is_disabled()  # it would erase the stored label
    act(page, lambda: root.get_by_role("button", name="Cancel edit").click())
    assert len(LabelStore(store_path).events()) == count and root.get_attribute("data-item-id") == ""


def test_a_late_kernel_gets_a_retry_and_a_broken_rule_and_a_gold_item_get_a_message(session):
    page, store_path = session
    root = page.locator(".rlhflab-labeler")
    act(page, lambda: root.get_by_role("button", name="Undo", exact=True).click())  # an item to label
    item = shown(page)[0]
    count = len(LabelStore(store_path).events())
    # The next message takes 6 s, as behind a busy kernel or a locked store; later ones are answered at once.
    # (A cell that sleeps would not do: this ipykernel handles widget messages while a cell runs.)
    run_in_kernel(page, "import time\n_handle = labeler.handle\n"
                        "def late(message):\n    labeler.handle = _handle\n    time.sleep(6)\n    _handle(message)\n"
                        "labeler.handle = late")
    root.get_by_role("button", name="Tie", exact=True).click()
    # A late reply greys the widget out; one in time does not, since repainting the whole widget cost a click 4 ms
    page.wait_for_function("() => document.querySelector('.rlhflab-labeler').classList.contains('rl-slow')",
                           timeout=2000)
    page.wait_for_function("() => document.querySelector('.rlhflab-labeler .rl-status').textContent"
                           ".startsWith('the kernel did not answer')", timeout=REPLY_TIMEOUT_MS + 2000)
    assert not {"rl-pending", "rl-slow"} & set(root.get_attribute("class").split())  # not greyed out for good
    root.get_by_role("button", name="Retry").click()
    page.wait_for_function(SETTLED.format(item), timeout=30_000)
    page.wait_for_function("() => document.querySelector('.rlhflab-labeler .rl-status').textContent"
                           ".startsWith('already saved')", timeout=10_000)
    assert [(e["item_id"], e["choice"]) for e in LabelStore(store_path).events()[count:]] == [(item, "tie")]
    assert "not saved" not in root.locator(".rl-status").inner_text()

    # The guidelines now ask a reason for "both bad", and a gold item says its expected answer once answered.
    gold = Item(f"Gold: {PAYLOADS[0]}", (f"right {PAYLOADS[1]}", f"wrong {PAYLOADS[4]}"), ("p1", "p2"), gold="a")
    run_in_kernel(page, "from rlhflab.labeling.records import Item\n"
                        "labeler.config.rationale_for, labeler.config.gold_feedback = ('both_bad',), True\n"
                        f"labeler.store.add_items([Item({gold.prompt!r}, {gold.responses!r}, {gold.sources!r}, "
                        "gold='a')])\nlabeler.show_next()")
    page.wait_for_function(SETTLED.format(""))
    count = len(LabelStore(store_path).events())
    root.get_by_role("button", name="Both bad", exact=True).click()
    page.wait_for_function("() => document.querySelector('.rlhflab-labeler .rl-status').textContent.startsWith("
                           "'not saved: the guidelines ask for a reason when the answer is both bad')")
    assert len(LabelStore(store_path).events()) == count and shown(page)[0] == gold.item_id  # still there to fix
    root.locator(".rl-rationale").fill("neither says it right")
    item, left = act(page, lambda: root.get_by_role("button", name="Both bad", exact=True).click())
    side = "left" if left == gold.responses[0] else "right"
    feedback = root.locator(".rl-feedback")
    assert feedback.locator(".rl-heading").inner_text() == (
        f"Calibration item: the expected answer was {side} better; you gave both bad")
    assert feedback.locator(".rl-feedback-better").inner_text() == f"the better response: {gold.responses[0]}"
    assert root.locator("img, script, svg, [onerror], [onload]").count() == 0
    assert page.evaluate("() => window.__pwned") is None and page.dialogs == []


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
        (compared, "label", "ab"[events[2]["shown_order"][0]], None, None)]
    items = store.items()
    assert [len(items[i].responses) for i in (liked, disliked, compared)] == [1, 1, 2]
    assert [(r["item_id"], r["label"]) for r in ratings(store)] == [(liked, True), (disliked, False)]
    chosen = items[compared].responses[events[2]["shown_order"][0]]
    assert [(r["completion"], r["label"], r["source"]) for r in kto_rows(store)] == [
        (items[liked].responses[0], True, "rating"), (items[disliked].responses[0], False, "rating"),
        (chosen, True, "pair"), (items[compared].responses[events[2]["shown_order"][1]], False, "pair")]
    assert page.evaluate("() => window.__pwned") is None and page.dialogs == []
    assert root.locator("img, script, [onerror]").count() == 0


def test_an_item_from_the_queue_leaves_focus_where_the_person_is_typing(playground):
    page, store_path = playground
    root = page.locator(".rlhflab-labeler")
    assert root.get_attribute("data-item-id") == ""
    page.evaluate("() => { const box = document.createElement('textarea'); box.id = 'elsewhere';"
                  " document.body.prepend(box); box.focus(); }")
    run_in_kernel(page, "from rlhflab.labeling.candidates import GenerationQueue\n"
                        "queue = GenerationQueue(labeler.store, ['Where does the fox sleep?'], [load_policy('tiny')])\n"
                        "queue.listeners.append(labeler._on_new_items)  # as PairwiseLabeler(queue=queue) does\n"
                        "queue.start()")
    page.wait_for_function(SETTLED.format(""))
    assert page.evaluate("() => document.activeElement.id") == "elsewhere"
    page.keyboard.type("ab")
    assert page.locator("#elsewhere").input_value() == "ab"
    assert len(LabelStore(store_path).events()) == 3  # the keys stayed text, not labels


CONVERSATION = [{"role": "user", "content": "Which bird hunts at night?"},
                {"role": "assistant", "content": f"The owl. {PAYLOADS[0]}"},
                {"role": "user", "content": f"Where does it sleep? {PAYLOADS[1]}"}]


def test_a_three_turn_conversation_shows_every_turn_and_takes_a_label(lab):
    store_path = lab[2] / "conversation.db"
    item = Item(CONVERSATION, ("In a hollow tree.", "Nowhere."), ("sft", "ppo"))
    LabelStore(store_path).add_items([item])
    page = open_labeler(lab, "conversation.ipynb", store_path, "LabelerConfig(seed=0)")
    root = page.locator(".rlhflab-labeler")
    page.wait_for_function(SETTLED.format(""))
    assert root.locator(".rl-prompt .rl-heading").inner_text() == "Conversation, 3 turns"
    turns = root.locator(".rl-prompt .rl-turn")
    assert [turns.nth(i).locator(".rl-turn-speaker").inner_text() for i in range(3)] == ["User", "Assistant", "User"]
    assert [turns.nth(i).locator(".rl-text").inner_text() for i in range(3)] == [t["content"] for t in CONVERSATION]
    assert page.evaluate("() => window.__pwned") is None and root.locator("script, img").count() == 0
    _, left = act(page, lambda: root.get_by_role("button", name="A is better", exact=True).click())
    [label] = LabelStore(store_path).labels()
    assert label["item_id"] == item.item_id and label["choice"] == "ab"[item.responses.index(left)]
    page.close()
