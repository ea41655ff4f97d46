// The ERDU console's only script: live list updates (server-sent events) and the silence preview.
// No framework, nothing fetched from elsewhere; every HTML fragment it inserts was escaped by the server.
(function () {
  "use strict";

  function live() {
    var url = document.body.dataset.live;
    if (!url || !window.EventSource) { return; }
    var badge = document.getElementById("live");
    var rowsUrl = document.body.dataset.rows;
    var known = null;
    var busy = false, again = false;

    function refresh() {
      if (!rowsUrl) { return; }
      if (busy) { again = true; return; }
      busy = true;
      fetch(rowsUrl, {credentials: "same-origin", headers: {"Accept": "text/html"}})
        .then(function (r) { if (!r.ok) { throw new Error(r.status); } return r.text(); })
        .then(function (html) {
          var body = document.getElementById("incident-rows");
          if (body) { body.innerHTML = html; }
        })
        .catch(function () { if (badge) { badge.className = "live off"; } })
        .finally(function () { busy = false; if (again) { again = false; refresh(); } });
    }

    function changed(version) {
      if (known !== null && version !== known) {
        if (rowsUrl) { refresh(); }
        else if (document.body.dataset.noticeOnChange) {
          var note = document.getElementById("changed-notice");
          if (!note) {
            note = document.createElement("p");
            note.id = "changed-notice";
            note.className = "flash";
            note.innerHTML = 'Incidents changed since this page was loaded: <a href="">reload</a>.';
            document.querySelector("main").prepend(note);
          }
        }
      }
      known = version;
    }

    var source = new EventSource(url);
    source.addEventListener("hello", function (e) {
      if (badge) { badge.className = "live on"; }
      // A change between the page's render and the stream's start still refreshes the list.
      if (known === null && rowsUrl) { known = e.data; refresh(); } else { changed(e.data); }
    });
    source.addEventListener("changed", function (e) { changed(e.data); });
    source.onerror = function () { if (badge) { badge.className = "live off"; } };
  }

  function silencePreview() {
    var out = document.getElementById("silence-preview");
    var box = document.getElementById("silence-matchers");
    if (!out || !box) { return; }
    var sample = document.getElementById("silence-sample");
    var timer = null, asked = 0;

    function ask() {
      var mine = ++asked;
      out.textContent = "…";
      fetch(out.dataset.preview + "?matchers=" + encodeURIComponent(box.value), {credentials: "same-origin"})
        .then(function (r) { return r.json(); })
        .then(function (data) {
          if (mine !== asked) { return; }
          if (data.error) {
            out.textContent = "?";
            out.dataset.count = "";
            sample.textContent = data.error;
            return;
          }
          out.textContent = String(data.matched) + (data.capped ? "+" : "");
          out.dataset.count = String(data.matched);
          sample.textContent = data.sample.length ? "(" + data.sample.join(", ") + (data.matched > data.sample.length ? ", …" : "") + ")" : "";
        })
        .catch(function () { out.textContent = "?"; });
    }

    box.addEventListener("input", function () { clearTimeout(timer); timer = setTimeout(ask, 250); });
    ask();
  }

  document.addEventListener("DOMContentLoaded", function () { live(); silencePreview(); });
})();
