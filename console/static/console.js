// Live refresh: every 2 s, replace the tables with the server's current rendering (/live).
// Paused while the operator types in or holds a form of the live area, so nothing they chose is wiped.
(function () {
  "use strict";
  var live = document.getElementById("live");
  function busy() {
    var a = document.activeElement;
    if (a && live.contains(a) && (a.tagName === "INPUT" || a.tagName === "SELECT")) { return true; }
    return live.querySelector("input[type=checkbox]:checked") !== null;
  }
  function refresh() {
    if (busy()) { return; }
    fetch("/live", {credentials: "same-origin", cache: "no-store"}).then(function (response) {
      if (response.status === 401) { window.location.assign("/login"); return null; }
      return response.ok ? response.text() : null;
    }).then(function (html) {
      if (html !== null && !busy()) { live.innerHTML = html; }
    }).catch(function () { /* the server is restarting: try again next time */ });
  }
  window.setInterval(refresh, 2000);
}());
