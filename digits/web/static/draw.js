// The draw page: white ink on a black canvas (MNIST's polarity; the inbox's preprocessing
// takes either), pointer events for mouse, pen and touch. Predict sends the canvas as a PNG
// to /draw/predict with the CSRF header; answers go in with textContent only.
"use strict";
(function () {
  const pad = document.getElementById("pad");
  const ctx = pad.getContext("2d");
  const el = (id) => document.getElementById(id);
  let drawing = false;
  let last = null;
  let inked = false;

  function clear() {
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, pad.width, pad.height);
    inked = false;
    el("answer").hidden = true;
    el("draw-error").textContent = "";
  }
  function at(event) {
    const r = pad.getBoundingClientRect();
    return { x: (event.clientX - r.left) * (pad.width / r.width),
             y: (event.clientY - r.top) * (pad.height / r.height) };
  }
  function stroke(from, to) {
    ctx.strokeStyle = "#fff";
    ctx.fillStyle = "#fff";
    ctx.lineWidth = 22;  // a pen at this size: MNIST strokes are 2-3 px in its 20 px box
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    ctx.beginPath();
    ctx.moveTo(from.x, from.y);
    ctx.lineTo(to.x, to.y);
    ctx.stroke();
    inked = true;
  }
  pad.addEventListener("pointerdown", (e) => {
    e.preventDefault();
    pad.setPointerCapture(e.pointerId);
    drawing = true;
    last = at(e);
    stroke(last, last);
  });
  pad.addEventListener("pointermove", (e) => {
    if (!drawing) return;
    const p = at(e);
    stroke(last, p);
    last = p;
  });
  const stop = () => { drawing = false; last = null; };
  pad.addEventListener("pointerup", stop);
  pad.addEventListener("pointercancel", stop);

  function show(d) {
    el("label").textContent = String(d.label);
    el("confidence").textContent = (100 * d.confidence).toFixed(1) + " %";
    el("review").hidden = !d.needs_review;
    const rows = d.top3.map((t) => {
      const tr = document.createElement("tr");
      const a = document.createElement("td"); a.textContent = String(t.label);
      const b = document.createElement("td"); b.className = "num"; b.textContent = (100 * t.p).toFixed(1) + " %";
      tr.append(a, b);
      return tr;
    });
    el("top3").replaceChildren(...rows);
    if (typeof d.seen === "string" && d.seen.startsWith("data:image/png;base64,")) el("seen").src = d.seen;
    el("model-version").textContent = String(d.model_version);
    el("answer").hidden = false;
  }
  async function predict() {
    el("draw-error").textContent = "";
    if (!inked) { el("draw-error").textContent = "Draw a digit first."; return; }
    const blob = await new Promise((ok) => pad.toBlob(ok, "image/png"));
    el("predict").disabled = true;
    try {
      const response = await fetch("/draw/predict", {
        method: "POST",
        headers: { "Content-Type": "image/png", "X-CSRF-Token": window.digits.csrf() },
        body: blob,
        credentials: "same-origin",
      });
      const data = await response.json().catch(() => ({}));
      if (!response.ok) throw new Error(data.detail || response.statusText);
      show(data);
    } catch (err) {
      el("draw-error").textContent = err.message;
    } finally {
      el("predict").disabled = false;
    }
  }
  el("predict").addEventListener("click", predict);
  el("clear").addEventListener("click", clear);
  document.addEventListener("keydown", (e) => {
    if (e.target instanceof HTMLInputElement) return;
    if (e.key === "Enter") { e.preventDefault(); predict(); }
    else if (e.key === "Escape" || e.key === "c") { e.preventDefault(); clear(); }
  });
  clear();
})();
