// Live job status (templates/core/_job_status.html): every [data-job-watch] element names a
// job and its API URL. While the job is not finished its API is polled, about once a second,
// more slowly while nothing changes, and not at all while the page is hidden. Each answer
// updates the page's [data-job="<id>"][data-job-field] elements; the last one writes the
// outcome with its links and removes the [data-job="<id>"][data-job-stale] elements, or,
// with data-job-reload, reloads the page once.
(function () {
  var TERMINAL = ["succeeded", "failed", "cancelled", "interrupted"];
  var FIRST_DELAY = 1000, MAX_DELAY = 5000, ERROR_DELAY = 5000;

  function fields(id, name) {
    return document.querySelectorAll('[data-job="' + id + '"][data-job-field="' + name + '"]');
  }

  function setText(id, name, text) {
    fields(id, name).forEach(function (el) { el.textContent = text; });
  }

  function when(iso) {
    return iso ? iso.slice(0, 19).replace("T", " ") : "—";  // the server's zone is UTC
  }

  function duration(seconds) {
    if (seconds < 90) return Math.max(1, Math.round(seconds)) + " s";
    if (seconds < 5400) return Math.round(seconds / 60) + " min";
    return (seconds / 3600).toFixed(1) + " h";
  }

  function progressText(p) {
    if (typeof p.done === "number" && typeof p.total === "number" && p.total > 0) {
      return (p.phase ? p.phase + " " : "") + p.done.toLocaleString() + " of " + p.total.toLocaleString();
    }
    return p.phase || "";
  }

  function showOutcome(id, outcome) {
    fields(id, "outcome").forEach(function (el) {
      el.textContent = outcome.text;
      outcome.links.forEach(function (link) {
        // Only this site's own paths: a result cannot send the reader elsewhere.
        if (link.url.charAt(0) !== "/" || link.url.charAt(1) === "/") return;
        var a = document.createElement("a");
        a.href = link.url;
        a.textContent = link.label;
        el.appendChild(document.createTextNode(" "));
        el.appendChild(a);
      });
    });
  }

  function show(id, data) {
    var p = data.progress || {};
    fields(id, "status").forEach(function (el) {
      el.textContent = data.status;
      el.className = "status status-" + data.status;
    });
    setText(id, "phase", data.terminal ? "" : progressText(p));  // a finished job's last phase is history
    setText(id, "eta", data.eta_seconds != null ? "about " + duration(data.eta_seconds) + " left" : "");
    setText(id, "wait", data.wait ? data.wait.sentence : "");
    setText(id, "started_at", when(data.started_at));
    setText(id, "finished_at", when(data.finished_at));
    setText(id, "heartbeat_at", when(data.heartbeat_at));
    fields(id, "error").forEach(function (el) {
      el.textContent = data.error || "—";
      el.className = data.error ? "error" : "muted";
    });
    setText(id, "progress", JSON.stringify(p));
    setText(id, "result", JSON.stringify(data.result));
    if (typeof p.done === "number" && typeof p.total === "number" && p.total > 0) {
      fields(id, "bar").forEach(function (el) { el.style.width = Math.min(100, 100 * p.done / p.total).toFixed(1) + "%"; });
    }
  }

  function finish(root, id, data) {
    if (root.hasAttribute("data-job-reload")) {
      window.location.reload();
      return;
    }
    document.querySelectorAll('[data-job="' + id + '"][data-job-stale]').forEach(function (el) { el.remove(); });
    if (data.outcome) showOutcome(id, data.outcome);
  }

  function watch(root) {
    var id = root.dataset.job, url = root.dataset.jobUrl;
    var delay = FIRST_DELAY, timer = null, last = "", busy = false, over = false;
    if (TERMINAL.indexOf(root.dataset.jobStatus) >= 0) return;

    function schedule(ms) {
      clearTimeout(timer);
      timer = document.hidden ? null : setTimeout(poll, ms);
    }

    function answered(data) {
      busy = false;
      show(id, data);
      if (data.terminal) { over = true; finish(root, id, data); return; }
      var seen = JSON.stringify([data.status, data.progress, data.wait]);
      delay = seen === last ? Math.min(MAX_DELAY, delay * 1.25) : FIRST_DELAY;  // back off while idle
      last = seen;
      schedule(delay);
    }

    function poll() {
      timer = null;
      busy = true;
      fetch(url, {credentials: "same-origin", headers: {"Accept": "application/json"}})
        .then(function (r) { if (!r.ok) throw new Error(r.status); return r.json(); })
        .then(answered)
        .catch(function () { busy = false; schedule(ERROR_DELAY); });
    }

    document.addEventListener("visibilitychange", function () {
      if (document.hidden) { clearTimeout(timer); timer = null; }
      else if (timer === null && !busy && !over) { delay = FIRST_DELAY; poll(); }
    });
    poll();
  }

  document.querySelectorAll("[data-job-watch]").forEach(watch);
})();
