// Refreshes the live part of the status page. The ban form lives outside it,
// so a half-typed address survives every refresh.
(function () {
  const live = document.getElementById("live");
  if (!live) return;
  const every = Number(live.dataset.refresh) || 5000;
  async function tick() {
    if (!document.hidden) {
      try {
        const r = await fetch("/ui/live", { credentials: "same-origin", cache: "no-store" });
        if (r.status === 401) { location.reload(); return; }
        if (r.ok) {
          live.innerHTML = await r.text();
          document.body.dataset.refreshed = String((Number(document.body.dataset.refreshed) || 0) + 1);
        }
      } catch (e) { /* the gateway restarting: try again next time */ }
    }
    setTimeout(tick, every);
  }
  setTimeout(tick, every);
})();
