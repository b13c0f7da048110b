// Poll an upload's status once a second until its ingest ends, then reload to show the report.
(function () {
  var box = document.getElementById("progress");
  if (!box) return;
  var done = ["succeeded", "failed", "cancelled", "interrupted"];
  if (done.indexOf(box.dataset.status) >= 0) return;
  function show(data) {
    var p = data.progress || {};
    document.getElementById("upload-status").textContent = data.status;
    document.getElementById("upload-status").className = "status status-" + data.status;
    // A finished job's last phase ("redacting") is history, not what it is doing.
    document.getElementById("upload-phase").textContent = done.indexOf(data.status) >= 0 ? "" : (p.phase || "");
    document.getElementById("upload-wait").textContent = data.wait || "";
    if (p.total) document.getElementById("upload-bar").style.width = Math.min(100, 100 * p.done / p.total).toFixed(1) + "%";
    if (p.rows) document.getElementById("upload-counts").textContent = p.rows.toLocaleString() + " rows read";
    if (done.indexOf(data.status) >= 0) { window.location.reload(); return; }
    setTimeout(poll, 1000);
  }
  function poll() {
    fetch(box.dataset.statusUrl, {credentials: "same-origin"}).then(function (r) { return r.json(); }).then(show)
      .catch(function () { setTimeout(poll, 3000); });
  }
  poll();
})();
