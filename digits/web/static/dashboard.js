// The dashboard refreshes its figures and batch rows every two seconds from /api/dashboard,
// without reloading the page. Text goes in with textContent only (file names are user input).
"use strict";
(function () {
  const pct = (x, digits) => (x === null || x === undefined ? "–" : (100 * x).toFixed(digits) + " %");
  const set = (id, text) => { const el = document.getElementById(id); if (el) el.textContent = text; };
  function cell(text, cls) { const td = document.createElement("td"); td.textContent = text; if (cls) td.className = cls; return td; }
  function row(b) {
    const tr = document.createElement("tr");
    tr.dataset.batch = b.batch_id;
    const id = document.createElement("td");
    const a = document.createElement("a"); a.href = "/batches/" + b.batch_id; a.textContent = b.batch_id;
    id.appendChild(a); tr.appendChild(id);
    tr.appendChild(cell(b.source));
    tr.appendChild(cell(b.shown_status, "status"));
    tr.appendChild(cell(b.progress, "progress"));
    tr.appendChild(cell(b.items.toLocaleString("en"), "num items"));
    tr.appendChild(cell(String(b.errors), "num errors"));
    tr.appendChild(cell(String(b.flagged), "num flagged"));
    tr.appendChild(cell(pct(b.accuracy, 2), "num accuracy"));
    tr.appendChild(cell("v" + b.model_version, "num"));
    return tr;
  }
  async function refresh() {
    try {
      const response = await fetch("/api/dashboard", { credentials: "same-origin" });
      if (!response.ok) return;
      const d = await response.json();
      set("model-version", d.model && d.model.version ? "v" + d.model.version : "–");
      set("model-why", d.model ? d.model.why : "");
      set("queue-depth", String((d.queue.queued || 0) + (d.queue.running || 0)));
      set("worker-count", String(d.workers.length));
      set("review-waiting", String(d.review.flagged + d.review.audit));
      set("review-flagged", String(d.review.flagged));
      set("review-audit", String(d.review.audit));
      set("estimate", pct(d.estimate.accuracy, 1));
      set("estimate-text", d.estimate.text);
      const body = document.querySelector("#batches tbody");
      if (d.batches.length) body.replaceChildren(...d.batches.map(row));
    } catch (e) { /* the next tick tries again */ }
  }
  setInterval(refresh, 2000);
})();
