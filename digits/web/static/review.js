// The review queue: keyboard-first labelling with auto-advance.
//
// Items come a page at a time from /review/queue.json; the next page is asked for while eight
// items are still ahead, and the next items' pictures are loaded before they are shown, so
// going through a hundred items never waits on the server. A decision shows at once and is
// sent in the background; the requests go one after the other (a chain of promises), so an
// undo always follows the decisions before it and a page request sees every earlier
// decision recorded (its offset counts the loaded items the server still has waiting).
// Text goes in with textContent only: file names are user input.
"use strict";
(function () {
  const root = document.getElementById("review");
  if (!root) return;
  const batch = root.dataset.batch || "";
  const pageSize = Number(root.dataset.page || 25);
  const AHEAD = 8; // ask for the next page when this few loaded items are left
  const PRELOAD = 6; // pictures of this many next items are loaded in advance
  const $ = (id) => document.getElementById(id);
  const state = {
    items: [], // loaded queue items, in queue order
    ids: new Set(),
    index: 0,
    shown: new Map(), // item id -> label decided here (what the page shows)
    saved: new Set(), // item ids whose decision the server has recorded
    exhausted: false,
    loading: null,
    decidedHere: 0,
    firsts: [], // the kind of each first decision on an item made here (null: not saved)
  };
  const preloaded = new Map();
  let chain = Promise.resolve();

  // Decisions are saved one after another in the background; ``pending`` counts those not
  // saved yet. Leaving the page while some are pending asks first (a decision must never be
  // lost to a click on a link), and <body data-pending> tells tests and scripts when all are in.
  let pending = 0;
  function setPending(delta) {
    pending += delta;
    document.body.dataset.pending = String(pending);
    const saving = document.getElementById("saving");
    if (saving) saving.textContent = pending ? "saving " + pending + "…" : "all saved";
  }
  window.addEventListener("beforeunload", (event) => {
    if (pending > 0) { event.preventDefault(); event.returnValue = ""; }
  });
  function queued(task) {
    setPending(1);
    const run = chain.then(task).finally(() => setPending(-1));
    chain = run.catch(() => {});
    return run;
  }

  function withBatch(url) {
    return batch ? url + (url.includes("?") ? "&" : "?") + "batch=" + encodeURIComponent(batch) : url;
  }

  // The counts: an answer from the server reflects every decision sent before its request
  // (the chain), so the first decisions made since (``firsts`` from ``mark`` on) are taken off.
  function setCounts(counts, mark) {
    if (!counts) return;
    const later = state.firsts.slice(mark);
    const audit = later.filter((k) => k === "audit").length;
    const flagged = later.filter((k) => k !== null && k !== "audit").length;
    $("count-flagged").textContent = String(Math.max(0, counts.flagged - flagged));
    $("count-audit").textContent = String(Math.max(0, counts.audit - audit));
  }

  function bump(kind, step) {
    // decisions adjust the counts here; every queue page and undo brings the true ones
    const el = $(kind === "audit" ? "count-audit" : "count-flagged");
    el.textContent = String(Math.max(0, Number(el.textContent) + step));
  }

  function status(text) { $("review-status").textContent = text; }
  function problem(text) {
    const el = $("review-error");
    el.textContent = text;
    el.hidden = !text;
  }

  function fetchMore() {
    if (state.exhausted) return Promise.resolve();
    if (state.loading) return state.loading;
    const mark = state.firsts.length;
    state.loading = queued(async () => {
      // loaded items the server still has waiting come first in its order: skip them
      const offset = state.items.filter((i) => !state.saved.has(i.item_id)).length;
      const url = withBatch("/review/queue.json?offset=" + offset + "&limit=" + pageSize);
      const response = await fetch(url, { credentials: "same-origin" });
      if (!response.ok) throw new Error("the queue did not load (" + response.status + ")");
      const data = await response.json();
      let added = 0;
      for (const item of data.items) {
        if (state.ids.has(item.item_id)) continue;
        state.ids.add(item.item_id);
        state.items.push(item);
        added += 1;
      }
      if (data.items.length < pageSize) state.exhausted = true;
      setCounts(data.counts, mark);
      return added;
    }).catch((e) => problem(e.message)).finally(() => { state.loading = null; });
    return state.loading;
  }

  function preload(from) {
    for (let k = from; k < Math.min(state.items.length, from + PRELOAD); k++) {
      const item = state.items[k];
      if (preloaded.has(item.item_id)) continue;
      const pictures = [new Image(), new Image()];
      pictures[0].src = item.input_url;
      pictures[1].src = item.model_url;
      preloaded.set(item.item_id, pictures);
    }
  }

  function percent(p) { return (100 * p).toFixed(1) + " %"; }

  function show() {
    const empty = state.index >= state.items.length;
    $("review-card").hidden = empty;
    $("key-buttons").hidden = empty;
    $("review-empty").hidden = !empty;
    if (empty) {
      const skipped = state.items.filter((i) => !state.shown.has(i.item_id)).length;
      $("empty-detail").textContent = skipped
        ? "You went through the queue; " + skipped + " skipped item(s) still wait (reload to see them again)."
        : "Every flagged and audit item" + (batch ? " of batch " + batch : "") + " has a decision.";
      $("pos-index").textContent = String(state.items.length);
      return;
    }
    const item = state.items[state.index];
    const input = $("input-img");
    input.classList.remove("pixel");
    input.src = item.input_url;
    $("model-img").src = item.model_url;
    const kind = $("item-kind");
    kind.textContent = item.kind;
    kind.className = "badge " + item.kind;
    const decided = state.shown.get(item.item_id);
    const decidedBadge = $("item-decided");
    decidedBadge.hidden = decided === undefined;
    decidedBadge.textContent = decided === undefined ? "" : "you said " + decided;
    const reason = $("item-reason");
    reason.hidden = !item.review_reason;
    reason.textContent = item.review_reason ? "why: " + item.review_reason : "";
    $("item-label").textContent = String(item.label);
    $("item-confidence").textContent = percent(item.confidence);
    const body = document.querySelector("#top3 tbody");
    body.replaceChildren(...item.top3.map(([digit, p]) => {
      const tr = document.createElement("tr");
      const d = document.createElement("td");
      d.className = "digit-cell";
      d.textContent = String(digit);
      const bar = document.createElement("td");
      const meter = document.createElement("meter");
      meter.min = 0; meter.max = 1; meter.value = p;
      bar.appendChild(meter);
      const v = document.createElement("td");
      v.className = "num";
      v.textContent = percent(p);
      tr.append(d, bar, v);
      return tr;
    }));
    const batchLink = $("item-batch");
    batchLink.textContent = String(item.batch_id);
    batchLink.href = "/batches/" + item.batch_id;
    $("item-position").textContent = String(item.position);
    $("item-source").textContent = item.source;
    $("item-source").title = item.source;
    $("item-model").textContent = "v" + item.model_version;
    $("item-link").href = item.item_url;
    root.dataset.item = String(item.item_id);
    $("pos-index").textContent = String(state.index + 1);
    $("pos-total").textContent = String(state.items.length) + (state.exhausted ? "" : "+");
    $("session-decided").textContent = String(state.decidedHere);
    const form = $("accept-form");
    if (!batch && !form.elements.batch.dataset.touched) form.elements.batch.value = item.batch_id;
    preload(state.index + 1);
    if (state.items.length - state.index <= AHEAD) fetchMore().then(() => preload(state.index + 1));
  }

  async function go(step) {
    const next = state.index + step;
    if (next < 0) return;
    if (next >= state.items.length && !state.exhausted) {
      status("loading more items…");
      await fetchMore();
      status("");
    }
    state.index = Math.min(next, state.items.length);
    show();
  }

  function decide(label) {
    const item = state.items[state.index];
    if (!item) return;
    const given = label === null ? item.label : label;
    const before = state.shown.get(item.item_id);
    state.shown.set(item.item_id, given);
    state.decidedHere += 1;
    status("batch " + item.batch_id + ", ImageId " + item.position + " → " + given);
    go(1);
    const first = before === undefined ? state.firsts.push(item.kind) - 1 : -1;
    if (first >= 0) bump(item.kind, -1);
    queued(async () => {
      await window.digits.post("/review/decide", { item_id: item.item_id, label: given });
      state.saved.add(item.item_id);
    }).catch((e) => {
      if (first >= 0) { state.firsts[first] = null; bump(item.kind, 1); }
      if (before === undefined) state.shown.delete(item.item_id); else state.shown.set(item.item_id, before);
      state.decidedHere -= 1;
      problem("batch " + item.batch_id + ", ImageId " + item.position + " was not saved: " + e.message);
    });
  }

  function undo() {
    status("undoing…");
    const mark = state.firsts.length;
    queued(async () => {
      const data = await window.digits.post("/review/undo", { batch_id: batch ? Number(batch) : null });
      setCounts(data.counts, mark);
      if (data.item_id === null) { status("nothing to undo"); return; }
      state.saved.delete(data.item_id);
      state.shown.delete(data.item_id);
      state.decidedHere = Math.max(0, state.decidedHere - 1);
      const at = state.items.findIndex((i) => i.item_id === data.item_id);
      if (at >= 0) state.index = at;
      status("undone: item " + (at >= 0 ? state.items[at].position : data.item_id) + " is back in the queue");
      show();
    }).catch((e) => problem("undo failed: " + e.message));
  }

  const actions = {
    Enter: () => decide(null),
    s: () => { status("skipped"); go(1); },
    ArrowRight: () => go(1),
    ArrowLeft: () => go(-1),
    u: undo,
  };

  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const target = event.target;
    if (target && ["INPUT", "TEXTAREA", "SELECT"].includes(target.tagName)) return;
    if ($("review-card").hidden && event.key !== "u") return;
    const key = event.key.length === 1 ? event.key.toLowerCase() : event.key;
    if (/^[0-9]$/.test(key)) {
      event.preventDefault();
      decide(Number(key));
    } else if (actions[key]) {
      event.preventDefault();
      actions[key]();
    }
  });

  for (const button of document.querySelectorAll("button.digit")) {
    button.addEventListener("click", () => { button.blur(); decide(Number(button.dataset.label)); });
  }
  const clicks = { "btn-confirm": actions.Enter, "btn-skip": actions.s, "btn-next": actions.ArrowRight,
    "btn-prev": actions.ArrowLeft, "btn-undo": undo };
  for (const [id, action] of Object.entries(clicks)) {
    $(id).addEventListener("click", (event) => { event.currentTarget.blur(); action(); });
  }

  $("input-img").addEventListener("load", (event) => {
    // a 28×28 CSV row drawn small is scaled up in blocks, a scan smoothly
    event.target.classList.toggle("pixel", event.target.naturalWidth < 100);
  });

  const name = $("reviewer-name");
  if (name) {
    name.addEventListener("change", () => {
      const value = name.value.trim().slice(0, 64);
      document.cookie = "digits_reviewer=" + encodeURIComponent(value) +
        "; path=/; max-age=31536000; SameSite=Strict";
      status(value ? "decisions are now recorded as " + value : "");
    });
    name.addEventListener("keydown", (event) => { if (event.key === "Enter") name.blur(); });
  }

  const form = $("accept-form");
  form.elements.batch.addEventListener("input", () => { form.elements.batch.dataset.touched = "1"; });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const threshold = Number(form.elements.threshold.value);
    const batchId = Number(form.elements.batch.value);
    if (!batchId || !(threshold >= 0 && threshold <= 1)) {
      problem("give a batch and a threshold between 0 and 1");
      return;
    }
    const question = "Confirm the model's label for every flagged item of batch " + batchId +
      " with confidence ≥ " + threshold + "? Audit items are left for you.";
    if (!window.confirm(question)) return;
    const mark = state.firsts.length;
    queued(async () => {
      const data = await window.digits.post("/review/accept", { batch_id: batchId, threshold });
      status("accepted the model's label for " + data.accepted + " item(s) of batch " + batchId);
      setCounts(data.counts, mark);
      problem("");
      // the queue changed under the loaded items: load it again from the start
      Object.assign(state, { items: [], ids: new Set(), index: 0, saved: new Set(), exhausted: false, firsts: [] });
      state.shown.clear();
    }).then(() => fetchMore()).then(() => show()).catch((e) => problem("accept failed: " + e.message));
  });

  fetchMore().then(() => show());
})();
