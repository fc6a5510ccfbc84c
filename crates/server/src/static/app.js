// refit dashboard: live updates from /api/events and confirmed actions. No framework, no build.
"use strict";
(function () {
  const live = document.getElementById("live");
  const flash = document.getElementById("flash");
  const dialog = document.getElementById("confirm");
  const csrfMeta = document.querySelector('meta[name="csrf-token"]');
  const csrf = csrfMeta ? csrfMeta.content : "";
  // Set once per page load: a test (or a curious person) can tell an update from a reload.
  document.documentElement.dataset.loadedAt = String(Date.now());

  function say(text, bad) {
    flash.textContent = text;
    flash.className = bad ? "bad" : "good";
  }

  // Re-render the live region from the server; keep keyboard focus where it was.
  let pending = null;
  let lastEvent = "";
  async function refresh() {
    pending = null;
    const focused = document.activeElement;
    // Only elements that say what they are (data-*) are found again; others keep no focus.
    const key = focused && focused.dataset && Object.keys(focused.dataset).length ? JSON.stringify(focused.dataset) : null;
    const url = location.pathname + (location.search ? location.search + "&" : "?") + "fragment=1";
    try {
      const r = await fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } });
      if (!r.ok) return;
      live.innerHTML = await r.text();
      live.dataset.updates = String(Number(live.dataset.updates || "0") + 1);
      live.dataset.lastEvent = lastEvent;
      if (key) {
        for (const el of live.querySelectorAll("button, a")) {
          if (JSON.stringify(el.dataset) === key) { el.focus(); break; }
        }
      }
    } catch (e) { /* the next event tries again */ }
  }
  function soon() { if (!pending) pending = setTimeout(refresh, 100); }

  if (window.EventSource) {
    const es = new EventSource("/api/events");
    const on = (e) => { lastEvent = e.lastEventId || e.type; soon(); };
    es.addEventListener("cluster", on);
    es.addEventListener("fleet", on);
    es.addEventListener("lagged", on);
    es.onopen = () => { document.documentElement.dataset.stream = "open"; };
    es.onerror = () => { document.documentElement.dataset.stream = "retrying"; };
  }

  function confirmThen(text, go) {
    if (!dialog || !dialog.showModal) { if (window.confirm(text)) go(); return; }
    document.getElementById("confirm-text").textContent = text;
    dialog.returnValue = "";
    dialog.onclose = () => { if (dialog.returnValue === "ok") go(); };
    dialog.showModal();
    document.getElementById("confirm-ok").focus();
  }

  async function act(btn) {
    const run = btn.dataset.run, action = btn.dataset.action;
    const url = "/api/fleet/runs/" + encodeURIComponent(run) + "/" + action;
    const init = { method: "POST", credentials: "same-origin", headers: { "X-CSRF-Token": csrf } };
    if (btn.dataset.body) { init.body = btn.dataset.body; init.headers["Content-Type"] = "application/json"; }
    btn.disabled = true;
    try {
      const r = await fetch(url, init);
      const j = await r.json().catch(() => ({}));
      if (r.ok) say(action + " done: run " + run + " is " + j.state, false);
      else say(action + " refused: " + (j.error || r.status), true);
    } catch (e) {
      say(action + " failed: " + e, true);
    }
    btn.disabled = false;
    refresh();
  }

  document.addEventListener("click", (e) => {
    const btn = e.target.closest("button.act");
    if (!btn) return;
    e.preventDefault();
    confirmThen(btn.dataset.confirm, () => act(btn));
  });

  // Forms that change state (log out) carry the CSRF token in a header.
  document.addEventListener("submit", async (e) => {
    const f = e.target;
    if (!f.hasAttribute("data-csrf-form")) return;
    e.preventDefault();
    await fetch(f.action, { method: "POST", credentials: "same-origin", headers: { "X-CSRF-Token": csrf } });
    location.href = "/";
  });
})();
