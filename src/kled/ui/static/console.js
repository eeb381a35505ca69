// Kled console: live pages. Reading works without this file; with it, a page follows the
// changes the server names over Server-Sent Events and re-reads its live sections
// ([data-live] with an id) in place. Nothing from the server is run or parsed as script:
// new sections come from DOMParser, which does not execute scripts.
"use strict";
(function () {
  var main = document.querySelector("main[data-watch]");
  var banner = document.getElementById("live-banner");
  if (!main || !window.EventSource || !window.fetch) return;

  var timer = null;
  var reading = false;
  var again = false;

  function swap(html) {
    var next = new DOMParser().parseFromString(html, "text/html");
    var sections = next.querySelectorAll("[data-live][id]");
    for (var i = 0; i < sections.length; i++) {
      var here = document.getElementById(sections[i].id);
      if (here && here.hasAttribute("data-live")) {
        here.replaceWith(document.adoptNode(sections[i]));
      }
    }
  }

  function refresh() {
    if (reading) { again = true; return; }
    reading = true;
    fetch(window.location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) { if (html) swap(html); })
      .catch(function () { /* the stream's banner says what is wrong */ })
      .then(function () {
        reading = false;
        if (again) { again = false; refresh(); }
      });
  }

  function soon() {
    if (timer) clearTimeout(timer);
    timer = setTimeout(refresh, 30);
  }

  var lost = false;
  var source = new EventSource(main.getAttribute("data-watch"));
  source.addEventListener("change", soon);
  source.addEventListener("open", function () {
    document.documentElement.setAttribute("data-live", "open");
    if (banner) banner.hidden = true;
    if (lost) { lost = false; soon(); } // resumed from the last event id: catch up once
  });
  source.addEventListener("error", function () {
    lost = true;
    document.documentElement.setAttribute("data-live", "lost");
    if (banner) banner.hidden = false;
  });
  window.addEventListener("pagehide", function () { source.close(); });
})();

// An app's logs, followed live: each line goes in as text (a log line is whatever the app
// printed, so never as HTML). Follow keeps the newest line in view; Pause holds new lines
// back (counting them) until Resume; Search hides the lines that do not contain its text.
(function () {
  var panel = document.querySelector("[data-logs]");
  if (!panel || !window.EventSource) return;
  var list = document.getElementById("log-lines");
  var follow = document.getElementById("log-follow");
  var pause = document.getElementById("log-pause");
  var search = document.getElementById("log-search");
  var count = document.getElementById("log-count");
  var most = 5000;
  var held = [];
  var paused = false;
  panel.querySelector(".log-controls").hidden = false;

  function matches(li) {
    var q = search.value.toLowerCase();
    return !q || li.getAttribute("data-text").indexOf(q) !== -1;
  }

  function tell() {
    var shown = list.querySelectorAll("li:not([hidden])").length;
    var all = list.children.length;
    var text = search.value ? shown + " of " + all + " lines match" : all + " lines";
    if (paused) text += " · paused, " + held.length + " new held back";
    count.textContent = text;
  }

  function add(entry) {
    var li = document.createElement("li");
    li.className = "logline " + (entry.stream === "stderr" ? "stderr" : "stdout");
    var rep = document.createElement("span");
    rep.className = "rep";
    rep.textContent = "[" + entry.replica + "] ";
    var text = document.createElement("span");
    text.className = "text";
    text.textContent = String(entry.line);
    li.appendChild(rep);
    li.appendChild(text);
    li.setAttribute("data-text", String(entry.line).toLowerCase());
    li.hidden = !matches(li);
    list.appendChild(li);
    while (list.children.length > most) list.removeChild(list.firstChild);
  }

  function show(entries) {
    for (var i = 0; i < entries.length; i++) add(entries[i]);
    if (follow.checked && list.lastElementChild) {
      list.scrollTop = list.scrollHeight;
    }
    tell();
  }

  var source = new EventSource(panel.getAttribute("data-logs"));
  source.addEventListener("open", function () { panel.setAttribute("data-following", "open"); });
  source.addEventListener("error", function () { panel.setAttribute("data-following", "lost"); });
  source.addEventListener("line", function (e) {
    var entry;
    try { entry = JSON.parse(e.data); } catch (err) { return; }
    if (paused) { held.push(entry); tell(); return; }
    show([entry]);
  });
  pause.addEventListener("click", function () {
    paused = !paused;
    pause.setAttribute("aria-pressed", paused ? "true" : "false");
    pause.textContent = paused ? "Resume" : "Pause";
    if (!paused) { var out = held; held = []; show(out); } else { tell(); }
  });
  search.addEventListener("input", function () {
    for (var i = 0; i < list.children.length; i++) {
      list.children[i].hidden = !matches(list.children[i]);
    }
    tell();
  });
  follow.addEventListener("change", function () {
    if (follow.checked) list.scrollTop = list.scrollHeight;
  });
  window.addEventListener("pagehide", function () { source.close(); });
})();

// A refused edit: the caret goes to the line of the field at fault, selected.
(function () {
  var area = document.querySelector("textarea[data-error-line]");
  if (!area) return;
  var want = parseInt(area.getAttribute("data-error-line"), 10);
  var lines = area.value.split("\n");
  var start = 0;
  for (var i = 0; i < want - 1 && i < lines.length; i++) start += lines[i].length + 1;
  var end = start + (lines[want - 1] || "").length;
  area.focus();
  area.setSelectionRange(start, end);
})();
