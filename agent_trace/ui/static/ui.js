// agent-trace ui: live updates, the two-session picker, payloads on click, "/" to search.
// The pages are complete without this script; it only adds to them.
(function () {
  "use strict";
  var body = document.body;
  var page = body.getAttribute("data-page");
  var POLL_MS = 1000;

  // "/" focuses the search box (unless typing somewhere already).
  document.addEventListener("keydown", function (e) {
    var tag = (e.target && e.target.tagName) || "";
    if (e.key === "/" && !/^(INPUT|TEXTAREA|SELECT)$/.test(tag)) {
      var q = document.getElementById("q") || document.querySelector("form.search input");
      if (q) { e.preventDefault(); q.focus(); q.select(); }
    }
  });

  // Searches leave empty fields out of the URL: "/?q=heat" rather than "/?q=heat&tool=&...".
  document.addEventListener("submit", function (e) {
    var form = e.target;
    if (!form.matches("form.search")) { return; }
    Array.prototype.forEach.call(form.elements, function (field) {
      if (field.name && field.value === "") { field.disabled = true; }
    });
    // Re-enable after the navigation starts, so going back shows the fields usable.
    setTimeout(function () {
      Array.prototype.forEach.call(form.elements, function (field) { field.disabled = false; });
    }, 0);
  });

  // --- sessions: pick two to compare ------------------------------------------------
  var picked = [];
  function syncPicker() {
    var button = document.getElementById("compare-picked");
    if (!button) { return; }
    var boxes = document.querySelectorAll("#sessions-table input[name=s]");
    boxes.forEach(function (box) { box.checked = picked.indexOf(box.value) >= 0; });
    button.disabled = picked.length !== 2;
    button.textContent = picked.length === 2 ? "Compare " + picked[0] + " and " + picked[1]
      : "Compare selected (" + picked.length + "/2)";
  }
  document.addEventListener("change", function (e) {
    var box = e.target;
    if (!box.matches || !box.matches("#sessions-table input[name=s]")) { return; }
    picked = picked.filter(function (id) { return id !== box.value; });
    if (box.checked) { picked.push(box.value); }
    if (picked.length > 2) { picked.shift(); }
    syncPicker();
  });
  var compareButton = document.getElementById("compare-picked");
  if (compareButton) {
    compareButton.addEventListener("click", function () {
      if (picked.length !== 2) { return; }
      location.href = "/compare?a=" + encodeURIComponent(picked[0]) + "&b=" + encodeURIComponent(picked[1]);
    });
    syncPicker();
  }

  // --- compare: a step's payload on click ---------------------------------------------
  function showPayload(cell) {
    var sid = cell.getAttribute("data-session-id");
    var version = cell.getAttribute("data-version");
    document.querySelectorAll("td.point.selected").forEach(function (c) { c.classList.remove("selected"); });
    cell.classList.add("selected");
    var title = document.getElementById("payload-title");
    var pre = document.getElementById("payload");
    fetch("/api/sessions/" + encodeURIComponent(sid) + "/events/" + version)
      .then(function (r) { return r.json(); })
      .then(function (ev) {
        if (ev.error) { title.textContent = ev.error; pre.textContent = ""; return; }
        title.textContent = sid + " · v" + ev.version + " " + ev.event_type + " · " + ev.timestamp;
        title.className = "";
        pre.textContent = JSON.stringify(ev.payload, null, 2);
      });
  }
  document.addEventListener("click", function (e) {
    if (e.target.closest && e.target.closest("a")) { return; }
    var cell = e.target.closest && e.target.closest("td.point[data-version]");
    if (cell) { showPayload(cell); }
  });
  document.addEventListener("keydown", function (e) {
    if (e.key === "Enter" && e.target.matches && e.target.matches("td.point[data-version]")) {
      showPayload(e.target);
    }
  });

  // --- live: poll the index, refresh what this page shows -------------------------------
  if (!body.hasAttribute("data-live")) { return; }
  var position = body.getAttribute("data-position");
  var newIds = 0;

  function swap(doc, selector) {
    var fresh = doc.querySelector(selector);
    var old = document.querySelector(selector);
    if (fresh && old) { old.replaceWith(fresh); }
  }

  function refresh(status) {
    return fetch(location.href, { headers: { "Accept": "text/html" } })
      .then(function (r) { return r.text(); })
      .then(function (text) {
        var doc = new DOMParser().parseFromString(text, "text/html");
        if (page === "sessions") {
          var before = {};
          document.querySelectorAll("#sessions-table tbody tr[data-session-id]").forEach(function (tr) {
            before[tr.getAttribute("data-session-id")] = true;
          });
          swap(doc, "#sessions-table tbody");
          swap(doc, "#match-count");
          swap(doc, "nav.pager");
          document.querySelectorAll("#sessions-table tbody tr[data-session-id]").forEach(function (tr) {
            if (!before[tr.getAttribute("data-session-id")]) {
              tr.classList.add("new");
              newIds += 1;
            }
          });
          var counter = document.getElementById("new-count");
          if (counter && newIds) {
            counter.hidden = false;
            counter.textContent = "+" + newIds + " new since you opened this page";
          }
          syncPicker();
        } else {
          swap(doc, "main");
        }
        swap(doc, "#banner");
        swap(doc, "#live");
      });
  }

  function poll() {
    fetch("/api/changes", { headers: { "Accept": "application/json" } })
      .then(function (r) { return r.json(); })
      .then(function (status) {
        var changed = String(status.position) !== String(position);
        var banner = document.getElementById("banner");
        var bannerStale = banner && !banner.hidden && status.caught_up && !status.error;
        if (changed || bannerStale) {
          position = String(status.position);
          body.setAttribute("data-position", position);
          return refresh(status);
        }
      })
      .catch(function () { /* the server is restarting: try again at the next tick */ })
      .then(function () { setTimeout(poll, POLL_MS); });
  }
  setTimeout(poll, POLL_MS);
})();
