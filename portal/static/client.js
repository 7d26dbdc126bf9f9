// Live updates for the client conversation: polls for new messages (no third-party code).
(function () {
  "use strict";
  var list = document.getElementById("messages");
  if (!list) { return; }
  var after = list.getAttribute("data-after") || "";
  var you = "You";
  var org = (document.querySelector(".msg.theirs .who") || {}).textContent || "";

  function add(m) {
    if (document.getElementById("m-" + m.id)) { return; }
    var empty = list.querySelector(".empty");
    if (empty) { empty.remove(); }
    var li = document.createElement("li");
    li.className = "msg " + (m.mine ? "mine" : "theirs");
    li.id = "m-" + m.id;
    var who = document.createElement("span");
    who.className = "who";
    who.textContent = m.mine ? you : (org || "");
    var body = document.createElement("p");
    body.className = "body";
    body.textContent = m.text;  // textContent: message text is never parsed as HTML
    var time = document.createElement("time");
    time.setAttribute("datetime", m.at_iso);
    time.textContent = m.at_human;
    li.appendChild(who); li.appendChild(body); li.appendChild(time);
    list.appendChild(li);
    after = m.id;
  }

  function poll() {
    fetch("/s/thread/updates?after=" + encodeURIComponent(after), { credentials: "same-origin" })
      .then(function (r) { if (r.status === 401) { throw new Error("signed out"); } return r.json(); })
      .then(function (data) { (data.messages || []).forEach(add); setTimeout(poll, 3000); })
      .catch(function () { /* signed out or offline: stop polling */ });
  }
  setTimeout(poll, 3000);
})();
