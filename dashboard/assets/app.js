// data_drip dashboard: live updates over Server-Sent Events.
//
// The server sends a message per batch of events this viewer may see (read as the viewer from
// drip.events_since). A message is only a signal: the page re-fetches its live region, as the
// viewer, at most once per REFRESH_MS however many events arrive. <body data-last-event> holds
// the cursor of the last event whose changes are on screen (tests wait on it).
(function () {
  "use strict";
  var REFRESH_MS = 250;
  var body = document.body;
  var cursor = body.getAttribute("data-cursor") || "";
  var src = body.getAttribute("data-live-src") || "";
  var followRun = parseInt(body.getAttribute("data-live-run") || "0", 10);
  var toggle = document.getElementById("live-toggle");
  var label = document.getElementById("live-label");

  // Relative times ("3 min ago") with the absolute time in the title, kept fresh.
  function relative(iso) {
    var d = (Date.now() - Date.parse(iso)) / 1000, ahead = d < 0, s = Math.round(Math.abs(d)), t;
    if (s < 5) return "just now";
    if (s < 60) t = s + " s";
    else if (s < 3600) t = Math.floor(s / 60) + " min";
    else if (s < 86400) t = Math.floor(s / 3600) + " h";
    else t = Math.floor(s / 86400) + " d";
    return ahead ? "in " + t : t + " ago";
  }
  function refreshTimes(root) {
    var els = (root || document).querySelectorAll("time[datetime]");
    for (var i = 0; i < els.length; i++) els[i].textContent = relative(els[i].getAttribute("datetime"));
  }
  setInterval(refreshTimes, 15000);

  if (!cursor || !src || typeof EventSource === "undefined") return;

  var es = null, wanted = true, pending = null, timer = null, inflight = false, lastFetch = 0;
  // Bumped when updates stop: a re-fetch that was under way then is not applied.
  var epoch = 0;

  // Cursors are "xid:id", compared as pairs; data-last-event only moves forward.
  function after(a, b) {
    var x = a.split(":"), y = b.split(":");
    try {
      var ax = BigInt(x[0]), bx = BigInt(y[0]);
      return ax > bx || (ax === bx && BigInt(x[1]) > BigInt(y[1]));
    } catch (err) { return true; }
  }
  function advance(c) {
    var cur = body.getAttribute("data-last-event") || "";
    if (!cur || after(c, cur)) body.setAttribute("data-last-event", c);
  }

  function setState(state, text) {
    body.setAttribute("data-live-state", state);
    if (label) label.textContent = text;
    if (toggle) {
      toggle.setAttribute("aria-pressed", wanted ? "true" : "false");
      toggle.title = wanted ? "Live updates: click to pause" : "Paused: click to resume live updates";
    }
  }

  function connect() {
    if (es) es.close();
    es = new EventSource("/live?after=" + encodeURIComponent(cursor));
    setState("reconnecting", "connecting…");
    es.addEventListener("ready", function () { setState("live", "Live"); });
    es.addEventListener("drip", function (e) {
      var msg;
      try { msg = JSON.parse(e.data); } catch (err) { return; }
      cursor = msg.cursor;
      appendActivity(msg.events || []);
      if (followRun === 0 || (msg.runs || []).indexOf(followRun) >= 0) schedule(msg.cursor);
      else advance(msg.cursor);
    });
    es.addEventListener("problem", function (e) { setState("reconnecting", "database: " + e.data); });
    es.onerror = function () {
      if (!wanted) return;
      setState("reconnecting", "reconnecting…");
      // The browser retries by itself after a network error; after an HTTP error it gives up,
      // so start again from the last cursor.
      if (es.readyState === EventSource.CLOSED) {
        setTimeout(function () { if (wanted && !document.hidden) connect(); }, 2000);
      }
    };
  }

  function disconnect(state, text) {
    epoch++;
    if (es) { es.close(); es = null; }
    if (timer) { clearTimeout(timer); timer = null; }
    pending = null;
    setState(state, text);
  }

  // Coalescing: one re-fetch per REFRESH_MS; events arriving meanwhile ride on the next one.
  function schedule(c) {
    pending = c;
    if (timer || inflight) return;
    timer = setTimeout(refresh, Math.max(0, REFRESH_MS - (Date.now() - lastFetch)));
  }

  function refresh() {
    timer = null;
    if (pending === null) return;
    var c = pending, e = epoch;
    pending = null;
    inflight = true;
    lastFetch = Date.now();
    fetch(src, { credentials: "same-origin", headers: { "X-Fragment": "1" } })
      .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
      .then(function (html) {
        if (e !== epoch) return;
        replaceLive(html);
        advance(c);
      })
      .catch(function () { if (pending === null && e === epoch) pending = c; })
      .then(function () {
        inflight = false;
        if (pending !== null && wanted) schedule(pending);
      });
  }

  function replaceLive(html) {
    var live = document.getElementById("live");
    if (!live) return;
    var open = {};
    var ds = live.querySelectorAll("details[id]");
    for (var i = 0; i < ds.length; i++) open[ds[i].id] = ds[i].open;
    live.innerHTML = html;
    for (var id in open) { var d = document.getElementById(id); if (d) d.open = open[id]; }
    refreshTimes(live);
  }

  // The run page keeps a client-side log of what the stream delivered (newest first).
  function appendActivity(events) {
    var list = document.getElementById("activity");
    if (!list) return;
    for (var i = 0; i < events.length; i++) {
      var ev = events[i];
      if (followRun !== 0 && ev.run_id !== followRun) continue;
      var li = document.createElement("li");
      li.setAttribute("data-event-id", String(ev.id));
      li.textContent = ev.event + (ev.batch != null ? " batch " + ev.batch : "") + (ev.status ? " → " + ev.status : "");
      list.insertBefore(li, list.firstChild);
    }
    while (list.children.length > 500) list.removeChild(list.lastChild);
  }

  if (toggle) {
    toggle.addEventListener("click", function () {
      wanted = !wanted;
      if (wanted) { connect(); } else { disconnect("paused", "Paused"); }
    });
  }

  // A hidden tab stops listening; it catches up from its cursor when shown again.
  document.addEventListener("visibilitychange", function () {
    if (document.hidden) { if (wanted) disconnect("hidden", "Paused (hidden tab)"); }
    else if (wanted) { connect(); }
  });

  refreshTimes();
  if (!document.hidden) connect(); else setState("hidden", "Paused (hidden tab)");
})();
