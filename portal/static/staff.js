// Staff portal: live updates over Server-Sent Events, and confirm prompts on destructive buttons.
// Self-hosted, no dependencies; the pages work without it (reload to see changes).
(function () {
  "use strict";

  // <button data-confirm="Question?">: ask before submitting its form.
  document.addEventListener("submit", function (ev) {
    var btn = ev.submitter;
    var question = btn && btn.getAttribute("data-confirm");
    if (question && !window.confirm(question)) { ev.preventDefault(); }
  });

  var live = document.getElementById("live");
  if (!live || !window.EventSource || !window.fetch || !window.DOMParser) { return; }
  var mode = live.getAttribute("data-live");
  var threadId = live.getAttribute("data-thread");
  var status = document.getElementById("live-status");
  var regions = mode === "thread" ? ["messages", "links"] : ["inbox-rows"];
  var busy = false, again = false, seen = {};

  function say(text) { if (status) { status.textContent = text; } }

  function swap(doc, id) {
    var fresh = doc.getElementById(id), old = document.getElementById(id);
    if (fresh && old) { old.replaceWith(document.importNode(fresh, true)); }
  }

  function badge(doc) {
    var fresh = doc.getElementById("unread-badge"), old = document.getElementById("unread-badge");
    if (old && fresh) { old.textContent = fresh.textContent; }
    else if (old) { old.remove(); }
  }

  // Fetch this page again (marked as background: it does not extend the idle timeout) and
  // replace the changed regions. The HTML is our own, escaped on the server.
  function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    fetch(window.location.href, { credentials: "same-origin", headers: { "X-Hushlink-Background": "1" } })
      .then(function (r) {
        if (r.status !== 200 || r.redirected) { throw new Error("status " + r.status); }
        return r.text();
      })
      .then(function (html) {
        var doc = new DOMParser().parseFromString(html, "text/html");
        regions.forEach(function (id) { swap(doc, id); });
        badge(doc);
        say("Updated at " + new Date().toLocaleTimeString() + ".");
      })
      .catch(function () { say("Live updates paused. Reload the page to see new activity."); })
      .then(function () {
        busy = false;
        if (again) { again = false; setTimeout(refresh, 500); }
      });
  }

  var source = new EventSource("/staff/live");
  source.addEventListener("thread", function (ev) {
    var data;
    try { data = JSON.parse(ev.data); } catch (e) { return; }
    if (mode === "thread") {
      // Only new activity on this thread; reading it (unread back to 0) is not news.
      if (data.thread_id !== threadId || seen[data.thread_id] === data.last_activity_at) { return; }
      seen[data.thread_id] = data.last_activity_at;
    }
    refresh();
  });
  source.addEventListener("signed_out", function () {
    source.close();
    say("Your session has ended. Sign in again to continue.");
  });
  source.onerror = function () {
    if (source.readyState === EventSource.CLOSED) { say("Live updates stopped. Reload the page."); }
  };
})();
