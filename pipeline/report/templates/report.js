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
  function apply() {
    var q = text ? text.value.trim().toLowerCase() : "";
    var s = status ? status.value : "all";
    var shown = 0;
    for (var i = 0; i < rows.length; i++) {
      var ok = (s === "all" || rows[i].getAttribute("data-status") === s) &&
               (q === "" || haystack[i].indexOf(q) !== -1);
      rows[i].style.display = ok ? "" : "none";
      if (ok) { shown++; }
    }
    if (count) { count.textContent = shown + " of " + rows.length + " shown"; }
  }
  // A link can carry a filter: index.html#q=chelsea&status=dropped
  var params = new URLSearchParams(window.location.hash.slice(1));
  if (text && params.get("q")) { text.value = params.get("q"); }
  if (status && params.get("status")) { status.value = params.get("status"); }
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
  });
})();
