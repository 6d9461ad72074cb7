// The upload page: files dropped or chosen are posted as multipart ``files`` to /upload with
// the CSRF header; the batches it made are then followed through /upload/progress every
// second until each has finished. File names are user input: textContent only.
"use strict";
(function () {
  const el = (id) => document.getElementById(id);
  const drop = el("drop");
  const input = el("files");
  let batches = [];  // [{batch_id, name}]
  let timer = null;

  function cell(text, cls) { const td = document.createElement("td"); td.textContent = text; if (cls) td.className = cls; return td; }
  function render(rows, names) {
    const body = document.querySelector("#uploaded tbody");
    body.replaceChildren(...rows.map((b) => {
      const tr = document.createElement("tr");
      tr.dataset.batch = b.batch_id;
      const id = document.createElement("td");
      const a = document.createElement("a"); a.href = "/batches/" + b.batch_id; a.textContent = String(b.batch_id);
      id.appendChild(a);
      const bar = document.createElement("progress");
      const done = b.predicted + b.errors + b.duplicates;
      bar.max = Math.max(b.items, 1); bar.value = b.status === "enqueueing" ? 0 : done;
      const progress = document.createElement("td"); progress.className = "progress";
      progress.append(bar, document.createTextNode(" " + b.progress));
      tr.append(id, cell(names[b.batch_id] || b.source), cell(b.shown_status, "status"), progress,
        cell(String(b.items), "num items"), cell(String(b.predicted), "num predicted"),
        cell(String(b.errors), "num errors"), cell(String(b.flagged), "num flagged"));
      return tr;
    }));
  }
  async function poll() {
    if (!batches.length) return;
    const query = batches.map((b) => "batch=" + encodeURIComponent(b.batch_id)).join("&");
    try {
      const response = await fetch("/upload/progress?" + query, { credentials: "same-origin" });
      if (!response.ok) return;
      const d = await response.json();
      const names = Object.fromEntries(batches.map((b) => [b.batch_id, b.name]));
      render(d.batches, names);
      el("no-worker").hidden = d.workers > 0;
      if (d.batches.length && d.batches.every((b) => b.finished)) {
        clearInterval(timer); timer = null;
        document.body.dataset.uploadDone = "1";
      }
    } catch (e) { /* the next tick tries again */ }
  }
  async function send(files) {
    el("upload-error").textContent = "";
    if (!files.length) return;
    el("chosen").textContent = files.length === 1 ? files[0].name : files.length + " files";
    const form = new FormData();
    for (const f of files) form.append("files", f, f.name);
    document.body.dataset.uploadDone = "";
    try {
      const response = await fetch("/upload", {
        method: "POST",
        headers: { "X-CSRF-Token": window.digits.csrf() },
        body: form,
        credentials: "same-origin",
      });
      const d = await response.json().catch(() => ({}));
      if (!response.ok) throw new Error(d.detail || response.statusText);
      batches = d.batches.map((b) => ({ batch_id: b.batch_id, name: b.name }));
      el("no-worker").hidden = d.workers > 0;
      await poll();
      if (timer) clearInterval(timer);
      timer = setInterval(poll, 1000);
    } catch (err) {
      el("upload-error").textContent = err.message;
    }
  }
  input.addEventListener("change", () => send(Array.from(input.files)));
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  for (const name of ["dragleave", "drop"]) {
    drop.addEventListener(name, (e) => { e.preventDefault(); drop.classList.remove("over"); });
  }
  drop.addEventListener("drop", (e) => send(Array.from(e.dataTransfer.files)));
})();
