// Shared by every page: writes carry the CSRF token from the page's meta tag.
"use strict";
window.digits = {
  csrf() {
    const meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.content : "";
  },
  async post(url, body) {
    const response = await fetch(url, {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": window.digits.csrf() },
      body: JSON.stringify(body || {}),
      credentials: "same-origin",
      keepalive: true, // a write already sent finishes even if the page is left meanwhile
    });
    const data = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(data.detail || response.statusText);
    return data;
  },
};
