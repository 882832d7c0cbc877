// Front end of rlhflab's PairwiseLabeler and RankingLabeler (anywidget; plain ES module, no build step).
//
// It renders what Python puts in the `item` trait and sends back what the person chose:
//   {action: "label", item_id, event_id, choice: "left"|"right"|"tie"|"both_bad", strength|null, flags, rationale}
//   {action: "label", item_id, event_id, choice: "up"|"down", flags, rationale}                  (one reply)
//   {action: "label", item_id, event_id, ranks: [rank per shown position], flags, rationale}     (rankings)
//   {action: "skip" | "flag_prompt", item_id, event_id, rationale}, {action: "undo", target},
//   {action: "edit", event_id}, {action: "cancel"}, {action: "prompt", text, mode: "compare"|"rate"},
//   {action: "still_here", item_id} (every `lease_renew_ms` while the item is on screen: keep its lease)
// Python maps shown positions back to stored responses, commits, then sends the next item. Any item with
// a single response (the playground's "rate one" mode, or one from the store) is rated thumbs up or down.
// Python also checks the guidelines' rules (a reason for some answers, a minimum time on an item) and
// answers a broken one with a status message; after a gold item it may send `feedback`, the expected answer.
//
// Labels must be given with eyes on the item: a new item takes input only after `min_view_ms` on screen,
// and key auto-repeat and the extra clicks of a double click are ignored. The `event_id` Python gave the
// shown item makes a resent answer (Retry, after `reply_timeout_ms` without a reply) a no-op; an undo
// names its `target` for the same reason. The widget takes focus only when it already had it, so keys
// typed elsewhere never become labels. Every key has a button (Colab passes no keys to widgets).
//
// Prompts and responses are untrusted model text: they are only ever set with textContent, and so are the
// guidelines' good and bad examples and the gold feedback. The one innerHTML is the guidelines panel, which
// Python renders from the project's own markdown with raw HTML and unsafe links disabled.

const STRENGTHS = ["slightly", "clearly", "much"];
const SPEAKERS = { system: "System", user: "User", assistant: "Assistant" }; // a turn's role, as shown
const SLOW_REPLY_MS = 200; // a reply later than this greys the widget out until it comes

/**
 * What a key press means, or null. Pure, so node can test it.
 * @param {string} key  KeyboardEvent.key
 * @param {"pairwise"|"ranking"} kind
 * @param {number} k  responses on screen (1: a reply to rate up or down)
 * @returns {{type: string, value?: any} | null}
 */
export function actionForKey(key, kind, k) {
  const lower = key.length === 1 ? key.toLowerCase() : key;
  if (lower === "s") return { type: "skip" };
  if (lower === "u") return { type: "undo" };
  if (lower === "p") return { type: "flag_prompt" };
  if (key === "Escape") return { type: "cancel" };
  if (kind === "pairwise" && k === 1) {
    if (key === "+" || key === "ArrowUp") return { type: "choice", value: "up" };
    if (key === "-" || key === "ArrowDown") return { type: "choice", value: "down" };
    return null;
  }
  if (kind === "pairwise") {
    if (lower === "a" || key === "ArrowLeft") return { type: "choice", value: "left" };
    if (lower === "b" || key === "ArrowRight") return { type: "choice", value: "right" };
    if (lower === "t") return { type: "choice", value: "tie" };
    if (lower === "x") return { type: "choice", value: "both_bad" };
    if (["1", "2", "3"].includes(key)) return { type: "strength", value: STRENGTHS[Number(key) - 1] };
    return null;
  }
  if (/^[1-9]$/.test(key) && Number(key) <= k) return { type: "rank", value: Number(key) - 1 };
  if (key === "=") return { type: "tie_next" };
  if (key === "Enter") return { type: "submit" };
  if (key === "Backspace") return { type: "clear" };
  return null;
}

/**
 * Ranks after clicking response `position` next: the next free rank, or the last rank again (a tie).
 * @param {(number|null)[]} ranks  rank per shown position, null when not yet ranked
 * @param {number} position
 * @param {boolean} tie  give it the same rank as the last one assigned
 */
export function assignRank(ranks, position, tie) {
  const out = ranks.slice();
  if (out[position] !== null) return out;
  const given = out.filter((r) => r !== null);
  const last = given.length ? Math.max(...given) : 0;
  out[position] = tie && last > 0 ? last : given.length + 1;
  return out;
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function button(label, title, onClick) {
  const node = element("button", "rl-button", label);
  node.type = "button";
  node.title = title;
  node.addEventListener("click", (event) => {
    if (event.detail > 1) return; // the second click of a double click would land on the next item
    onClick(event);
  });
  return node;
}

/** @param {{model: any, el: HTMLElement}} context */
function render({ model, el }) {
  const root = element("div", "rlhflab-labeler");
  root.tabIndex = 0;
  root.dataset.lmSuppressShortcuts = "true"; // JupyterLab: our keys are labels, not notebook commands
  el.appendChild(root);

  let strength = null; // stored only when the person gives one
  let ranks = [];
  let tieNext = false;
  let pending = false; // a message is on its way; ignore further input until Python answers
  let lastMessage = null; // what Retry sends again
  let replyTimer = null;
  let slowTimer = null;
  let readyTimer = null;
  let ready = false; // the item on screen has been there for min_view_ms

  // -- static frame ----------------------------------------------------------------------------
  const top = element("div", "rl-top");
  const progress = element("span", "rl-progress");
  const who = element("span", "rl-annotator");
  top.append(progress, who);

  const guidelines = element("details", "rl-guidelines");
  const guidelinesTitle = element("summary", "", "Guidelines");
  const guidelinesBody = element("div", "rl-guidelines-body");
  const examples = element("div", "rl-examples"); // good and bad responses side by side
  guidelines.append(guidelinesTitle, guidelinesBody, examples);

  // The playground: "compare two" asks for two replies to judge side by side, "rate one" for one to rate.
  const playground = element("div", "rl-playground");
  const modes = element("div", "rl-modes");
  let playMode = "compare";
  [["compare", "compare two", "two fresh replies side by side: which is better?"],
   ["rate", "rate one", "one fresh reply: thumbs up or down"]].forEach(([mode, name, title]) => {
    const b = button(name, title, () => setPlayMode(mode));
    b.dataset.mode = mode;
    modes.append(b);
  });
  const promptInput = element("textarea", "rl-prompt-input");
  promptInput.rows = 2;
  const ask = button("", "ask the model(s)", () => send({ action: "prompt", text: promptInput.value, mode: playMode }));
  playground.append(modes, promptInput, ask);

  const promptBox = element("div", "rl-prompt");
  const responses = element("div", "rl-responses");
  const controls = element("div", "rl-controls");
  const rationale = element("input", "rl-rationale");
  rationale.placeholder = "Why? (optional)";
  const status = element("div", "rl-status");
  const feedback = element("div", "rl-feedback"); // the expected answer to the gold item just answered
  // Actions that make sense with or without an item on screen: always drawn.
  const always = element("div", "rl-always");
  const retry = button("Retry", "send your last action again (stored at most once)", () => send(lastMessage));
  retry.hidden = true; // shown when the kernel did not answer in time
  always.append(button("Undo", "undo your last label (key U)", () => other("undo")), retry);
  const history = element("details", "rl-history");
  history.append(element("summary", "", "Your recent labels"));
  const historyList = element("ol", "rl-history-list");
  history.append(historyList);
  root.append(top, guidelines, playground, feedback, promptBox, responses, controls, always, status, history);

  function send(message) {
    if (pending) return;
    pending = true;
    lastMessage = message;
    retry.hidden = true;
    root.classList.add("rl-pending");
    clearTimeout(replyTimer);
    replyTimer = setTimeout(noReply, model.get("reply_timeout_ms"));
    // Greyed out only for a slow reply: repainting the whole widget took 4 ms of the 20 ms a click takes (p50,
    // headless Chromium on 2 cores), and a reply in time draws the next item at once anyway.
    clearTimeout(slowTimer);
    slowTimer = setTimeout(() => root.classList.add("rl-slow"), SLOW_REPLY_MS);
    model.send(message);
  }

  function answered() {
    pending = false;
    clearTimeout(replyTimer);
    clearTimeout(slowTimer);
    retry.hidden = true;
    root.classList.remove("rl-pending", "rl-slow");
  }

  function noReply() {
    answered();
    status.textContent = "the kernel did not answer: is it busy or restarted? Your last action may not be saved; " +
      "press Retry to send it again (it is stored at most once), or run the cell again if the kernel restarted";
    retry.hidden = false;
  }

  /** The item on screen takes a label, skip or flag: it has been seen for min_view_ms. */
  function setReady(value) {
    ready = value;
    root.dataset.ready = String(value);
    controls.querySelectorAll(".rl-answer").forEach((b) => { b.disabled = !value || b.dataset.editLocked === "true"; });
  }

  function shownFlags() {
    const flags = {};
    responses.querySelectorAll(".rl-response").forEach((card) => {
      const checked = [...card.querySelectorAll("input[type=checkbox]:checked")].map((c) => c.dataset.flag);
      if (checked.length) flags[card.dataset.position] = checked;
    });
    return flags;
  }

  function label(fields) {
    const item = model.get("item");
    if (!item.item_id || !ready) return;
    send({ action: "label", item_id: item.item_id, event_id: item.event_id, flags: shownFlags(),
           rationale: rationale.value, ...fields });
  }

  function other(action) {
    const item = model.get("item");
    if (action === "undo") {
      const newest = model.get("history")[0];
      return send({ action: "undo", target: newest ? newest.event_id : null });
    }
    if (action === "cancel") {
      if (item.editing) send({ action: "cancel" });
    } else if (item.editing) { // a skip or flag would replace the stored answer
      status.textContent = "you are editing: give a new answer, or Cancel (Esc) to keep the one stored";
    } else if (item.item_id && ready) {
      send({ action, item_id: item.item_id, event_id: item.event_id, rationale: rationale.value });
    }
  }

  /** An answer button: disabled until the item has been seen, and (`editLocked`) while editing. */
  function answer(name, title, onClick, editLocked = false) {
    const node = button(name, editLocked ? `${title}; while editing, Cancel keeps your earlier answer` : title, onClick);
    node.classList.add("rl-answer");
    node.dataset.editLocked = String(editLocked);
    node.disabled = !ready || editLocked;
    return node;
  }

  function setPlayMode(mode) {
    playMode = mode;
    modes.querySelectorAll("[data-mode]").forEach((b) => {
      b.classList.toggle("rl-selected", b.dataset.mode === mode);
      b.setAttribute("aria-pressed", String(b.dataset.mode === mode));
    });
    const rate = mode === "rate";
    promptInput.placeholder = rate ? "Type a prompt to rate one fresh reply" : "Type a prompt to see two fresh replies";
    ask.textContent = rate ? "Generate one reply" : "Generate two replies";
  }

  // -- drawing ---------------------------------------------------------------------------------
  function drawItem() {
    const item = model.get("item");
    const kind = model.get("kind");
    const hadFocus = root.contains(document.activeElement); // checked before the focused button is redrawn
    answered();
    root.dataset.itemId = item.item_id || "";
    root.dataset.eventId = item.event_id || "";
    promptBox.replaceChildren();
    responses.replaceChildren();
    controls.replaceChildren();
    const previous = item.previous || {};
    strength = previous.strength || null;
    rationale.value = previous.rationale || "";
    clearTimeout(readyTimer);
    setReady(false);
    if (!item.item_id) return;
    readyTimer = setTimeout(() => setReady(true), model.get("min_view_ms"));

    drawPrompt(item);
    const k = item.responses.length;
    const rating = kind === "pairwise" && k === 1; // one reply, rated on its own
    ranks = item.previous && item.previous.ranks ? item.previous.ranks.slice() : new Array(k).fill(null);
    item.responses.forEach((text, position) => {
      const card = element("div", "rl-response");
      card.dataset.position = String(position);
      const name = rating ? "Reply" : kind === "pairwise" ? (position === 0 ? "A (left)" : "B (right)")
        : `Response ${position + 1}`;
      card.append(element("div", "rl-heading", name), element("div", "rl-text", text));
      const flags = element("div", "rl-flags");
      const flagged = (previous.flags || {})[String(position)] || [];
      model.get("flag_names").forEach((flag) => {
        const box = element("label", "rl-flag");
        const input = element("input");
        input.type = "checkbox";
        input.dataset.flag = flag;
        input.checked = flagged.includes(flag);
        box.append(input, document.createTextNode(" " + flag));
        flags.append(box);
      });
      card.append(flags);
      if (kind === "ranking") {
        const rank = element("div", "rl-rank");
        card.append(rank, button("Next best", "give this response the next rank", () => rankClick(position, false)),
                    button("Tie with last", "same rank as the last one you gave", () => rankClick(position, true)));
      }
      responses.append(card);
    });

    const choices = [];
    if (rating) {
      const thumbs = element("div", "rl-thumbs");
      choices.push(["up", answer("👍 good", "a good reply (key + or ↑)", () => label({ choice: "up" }))],
                   ["down", answer("👎 bad", "a bad reply (key - or ↓)", () => label({ choice: "down" }))]);
      thumbs.append(...choices.map(([, b]) => b));
      controls.append(thumbs);
    } else if (kind === "pairwise") {
      const strengths = element("div", "rl-strengths");
      STRENGTHS.forEach((name, i) => {
        const b = button(`${i + 1} ${name}`, `strength: ${name} better (key ${i + 1}); none chosen, none stored`,
                         () => setStrength(name));
        b.dataset.strength = name;
        strengths.append(b);
      });
      choices.push(["left", answer("A is better", "key A or ←", () => label({ choice: "left", strength }))],
                   ["right", answer("B is better", "key B or →", () => label({ choice: "right", strength }))],
                   ["tie", answer("Tie", "key T", () => label({ choice: "tie" }))],
                   ["both_bad", answer("Both bad", "key X", () => label({ choice: "both_bad" }))]);
      controls.append(strengths, ...choices.map(([, b]) => b));
      setStrength(strength);
    } else {
      controls.append(answer("Submit ranking", "key Enter", submitRanking),
                      button("Clear ranks", "key Backspace", () => { ranks = new Array(k).fill(null); drawRanks(); }));
      drawRanks();
    }
    choices.forEach(([choice, b]) => b.classList.toggle("rl-earlier", previous.choice === choice));
    controls.append(rationale,
      answer("Skip", "key S", () => other("skip"), item.editing),
      answer("Flag prompt", "the prompt itself is bad (key P)", () => other("flag_prompt"), item.editing));
    if (item.editing) controls.append(button("Cancel edit", "keep your earlier answer (key Esc)", () => other("cancel")));
    if (hadFocus) root.focus({ preventScroll: true }); // never pull focus (and keys) away from another cell
  }

  function setStrength(name) {
    strength = name;
    controls.querySelectorAll("[data-strength]").forEach((b) => {
      b.classList.toggle("rl-selected", b.dataset.strength === name);
    });
  }

  function rankClick(position, tie) {
    ranks = assignRank(ranks, position, tie);
    drawRanks();
  }

  function drawRanks() {
    responses.querySelectorAll(".rl-response").forEach((card, position) => {
      card.querySelector(".rl-rank").textContent = ranks[position] === null ? "rank: -" : `rank: ${ranks[position]}`;
    });
  }

  function submitRanking() {
    if (ranks.some((r) => r === null)) {
      status.textContent = "rank every response first (ties allowed)";
      return;
    }
    label({ ranks });
  }

  function drawFrame() {
    who.textContent = `annotator: ${model.get("annotator")}`;
    guidelinesTitle.textContent = `Guidelines (version ${model.get("guidelines_version")})`;
    guidelinesBody.innerHTML = model.get("guidelines_html"); // project-written, sanitised by Python
    examples.replaceChildren(...model.get("examples").map((example) => {
      const row = element("div", "rl-example");
      const side = (name, text) => {
        const card = element("div", `rl-example-side rl-example-${name}`);
        card.append(element("div", "rl-heading", name), element("div", "rl-text", text));
        return card;
      };
      const pairRow = element("div", "rl-example-pair");
      pairRow.append(side("good", example.good), side("bad", example.bad));
      row.append(element("div", "rl-heading", "Example"), element("div", "rl-text", example.prompt), pairRow);
      if (example.why) row.append(element("div", "rl-example-why", example.why));
      return row;
    }));
    const needed = model.get("rationale_for");
    rationale.placeholder = needed.length ? `Why? (required for ${needed.join(", ")})` : "Why? (optional)";
    playground.style.display = model.get("playground") ? "" : "none";
  }

  // A text prompt is one user turn; a conversation shows every turn, each under its speaker, so the
  // person judges the reply to the whole dialogue.
  function drawPrompt(item) {
    const turns = item.turns || [{ role: "user", content: item.prompt }];
    const editing = item.editing ? " (editing your earlier label)" : "";
    if (turns.length === 1) {
      promptBox.append(element("div", "rl-heading", "Prompt" + editing), element("div", "rl-text", turns[0].content));
      return;
    }
    promptBox.append(element("div", "rl-heading", `Conversation, ${turns.length} turns` + editing));
    turns.forEach((turn) => {
      const speaker = SPEAKERS[turn.role] || "Other";
      const row = element("div", `rl-turn rl-turn-${speaker.toLowerCase()}`);
      row.append(element("div", "rl-turn-speaker", speaker), element("div", "rl-text", turn.content));
      promptBox.append(row);
    });
  }

  function drawFeedback() {
    const f = model.get("feedback");
    feedback.replaceChildren();
    feedback.hidden = !f || f.correct === undefined;
    if (feedback.hidden) return;
    feedback.classList.toggle("rl-right", f.correct);
    feedback.classList.toggle("rl-wrong", !f.correct);
    feedback.append(element("div", "rl-heading", f.correct
      ? `Calibration item: right, ${f.expected}`
      : `Calibration item: the expected answer was ${f.expected}; you gave ${f.given}`),
    element("div", "rl-text", f.prompt));
    if (f.better) feedback.append(element("div", "rl-text rl-feedback-better", `the better response: ${f.better}`));
  }

  function drawProgress() {
    const p = model.get("progress");
    const others = Object.entries(p.by_annotator || {}).map(([name, n]) => `${name} ${n}`).join(", ");
    progress.textContent = (p.qualifying ? `qualification round: ${p.qualifying} gold items · ` : "") +
      `labelled ${p.labelled ?? 0} · skipped ${p.skipped ?? 0} · prompts flagged ${p.flagged ?? 0}` +
      ` · remaining ${p.remaining ?? 0}` + (others ? ` · team: ${others}` : "");
  }

  function drawStatus() {
    status.textContent = model.get("status");
    answered(); // Python answered (an error, "nothing to undo", or the end of the queue)
  }

  function drawHistory() {
    historyList.replaceChildren();
    model.get("history").forEach((entry) => {
      const row = element("li", "rl-history-entry");
      row.append(element("span", "rl-history-prompt", entry.prompt), element("span", "rl-history-summary", entry.summary),
                 button("Edit", "change this label", () => send({ action: "edit", event_id: entry.event_id })));
      historyList.append(row);
    });
  }

  // -- keyboard ----------------------------------------------------------------------------------
  function onKey(event) {
    const tag = event.target && event.target.tagName;
    if (tag === "INPUT" || tag === "TEXTAREA" || event.ctrlKey || event.metaKey || event.altKey) return;
    const item = model.get("item");
    const action = actionForKey(event.key, model.get("kind"), item.responses ? item.responses.length : 0);
    if (!action) return;
    event.preventDefault();
    event.stopPropagation(); // keep JupyterLab's own shortcuts (a/b insert cells) out of it
    if (event.repeat) return; // a held key auto-repeats: one press, one action
    if (action.type === "choice") label(action.value === "left" || action.value === "right"
      ? { choice: action.value, strength } : { choice: action.value });
    else if (action.type === "strength") setStrength(action.value);
    else if (action.type === "rank") { rankClick(action.value, tieNext); tieNext = false; }
    else if (action.type === "tie_next") tieNext = true;
    else if (action.type === "submit") submitRanking();
    else if (action.type === "clear") { ranks = ranks.map(() => null); drawRanks(); }
    else other(action.type);
  }
  root.addEventListener("keydown", onKey);

  const handlers = [["change:item", drawItem], ["change:progress", drawProgress], ["change:status", drawStatus],
                    ["change:history", drawHistory], ["change:guidelines_html", drawFrame],
                    ["change:feedback", drawFeedback]];
  handlers.forEach(([name, handler]) => model.on(name, handler));
  // While an item is on screen in a visible tab, ask Python now and then to keep its lease, so that the
  // queue does not hand it to someone else while this person is still reading. Outside `send`: it needs
  // no reply and must never lock the buttons.
  // A tab hidden for longer than the lease (or a laptop asleep) comes back to an item that may have gone to
  // someone else: ask at once, so Python can move on before the person answers it.
  const stillHere = () => {
    const item = model.get("item");
    if (item.item_id && document.visibilityState === "visible") model.send({ action: "still_here", item_id: item.item_id });
  };
  const leaseTimer = model.get("lease_renew_ms") > 0 ? setInterval(stillHere, model.get("lease_renew_ms")) : null;
  if (leaseTimer !== null) document.addEventListener("visibilitychange", stillHere);
  drawFrame();
  setPlayMode(playMode);
  drawProgress();
  drawHistory();
  drawFeedback();
  drawItem();
  drawStatus();
  return () => {
    handlers.forEach(([name, handler]) => model.off(name, handler));
    root.removeEventListener("keydown", onKey);
    clearTimeout(replyTimer);
    clearTimeout(slowTimer);
    clearTimeout(readyTimer);
    clearInterval(leaseTimer);
    document.removeEventListener("visibilitychange", stillHere);
  };
}

export default { render };
