// Plain JS, no libraries. (1) Filter the samples table by text and status (also from the URL).
// (2) After load, record on <body> how long the page took and whether every image decoded,
//     so a headless browser's --dump-dom can check both (tests/test_report.py).
(function () {
  "use strict";
  var rows = Array.prototype.slice.call(document.querySelectorAll("#sample-table tbody tr"));
  var text = document.getElementById("sample-search");
  var status = document.getElementById("sample-status");
  var count = document.getElementById("sample-count");
  var haystack = rows.map(function (r) { return r.textContent.toLowerCase(); });
  // (3) numeric range filters: <input class="range-min|range-max" data-key="words"> against data-words
  var ranges = Array.prototype.slice.call(document.querySelectorAll("#sample-filter input[data-key]"));
  function inRanges(row) {
    for (var j = 0; j < ranges.length; j++) {
      var v = ranges[j].value.trim();
      if (v === "") { continue; }
      var raw = row.getAttribute("data-" + ranges[j].getAttribute("data-key"));
      if (raw === null || raw === "") { return false; }  // a bound excludes rows without the number
      var x = parseFloat(raw), bound = parseFloat(v);
      if (ranges[j].classList.contains("range-min") ? x < bound : x > bound) { return false; }
    }
    return true;
  }
  function apply() {
    var q = text ? text.value.trim().toLowerCase() : "";
    var s = status ? status.value : "all";
    var shown = 0;
    for (var i = 0; i < rows.length; i++) {
      var ok = (s === "all" || rows[i].getAttribute("data-status") === s) &&
               (q === "" || haystack[i].indexOf(q) !== -1) && inRanges(rows[i]);
      rows[i].style.display = ok ? "" : "none";
      if (ok) { shown++; }
    }
    if (count) { count.textContent = shown + " of " + rows.length + " shown"; }
  }
  // A link can carry a filter: index.html#q=chelsea&status=dropped
  var params = new URLSearchParams(window.location.hash.slice(1));
  if (text && params.get("q")) { text.value = params.get("q"); }
  if (status && params.get("status")) { status.value = params.get("status"); }
  // ...and ranges: #min-words=20&max-repetition=0.3
  ranges.forEach(function (inp) {
    var k = (inp.classList.contains("range-min") ? "min-" : "max-") + inp.getAttribute("data-key");
    if (params.get(k)) { inp.value = params.get(k); }
    inp.addEventListener("input", apply);
  });
  if (text) { text.addEventListener("input", apply); }
  if (status) { status.addEventListener("change", apply); }
  apply();
  window.addEventListener("load", function () {
    var imgs = Array.prototype.slice.call(document.images);
    var broken = imgs.filter(function (im) { return !(im.complete && im.naturalWidth > 0); });
    var b = document.body;
    b.setAttribute("data-load-ms", performance.now().toFixed(1));
    b.setAttribute("data-images-total", String(imgs.length));
    b.setAttribute("data-images-broken", String(broken.length));
    b.setAttribute("data-images-ok", broken.length === 0 ? "true" : "false");
    b.setAttribute("data-samples-shown", String(rows.filter(function (r) { return r.style.display !== "none"; }).length));
    // the embedding map as the browser laid it out: points with a non-empty box inside the svg
    var map = document.getElementById("embedding-map");
    if (map) {
      var pts = Array.prototype.slice.call(map.querySelectorAll("circle"));
      var box = map.getBoundingClientRect();
      var drawn = pts.filter(function (c) {
        var r = c.getBoundingClientRect();
        return r.width > 0 && r.left >= box.left - 1 && r.right <= box.right + 1 && r.top >= box.top - 1 && r.bottom <= box.bottom + 1;
      });
      b.setAttribute("data-map-points", String(pts.length));
      b.setAttribute("data-map-drawn", String(drawn.length));
    }
  });
})();
