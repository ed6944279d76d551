// Live refresh of the Backups page: its tables are re-read every second while a job runs (every
// five seconds otherwise), replacing only their bodies; nothing is loaded from anywhere else.
(function () {
  var ids = ["managed", "schedules", "jobs"];
  function refresh() {
    fetch(location.pathname + location.search, {credentials: "same-origin", cache: "no-store"})
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (!html) { return; }
        var doc = new DOMParser().parseFromString(html, "text/html");
        ids.forEach(function (id) {
          var fresh = doc.getElementById(id), here = document.getElementById(id);
          if (fresh && here) { here.tBodies[0].replaceWith(fresh.tBodies[0]); }
        });
        var running = document.querySelectorAll("#jobs .job-status");
        var busy = Array.prototype.some.call(running, function (c) { return c.textContent === "running"; });
        setTimeout(refresh, busy ? 1000 : 5000);
      })
      .catch(function () { setTimeout(refresh, 5000); });
  }
  setTimeout(refresh, 1000);
})();
