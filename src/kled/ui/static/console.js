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
