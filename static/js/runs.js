// A run's page: draw the progress bar, and while the run is active poll its live JSON every
// 2 s — update the progress text, append the new points to the curve charts, and reload the
// page once when the run ends, so that the evaluation section appears.
(function () {
  var POLL_MS = 2000, RETRY_MS = 5000;
  var bar = document.getElementById("run-bar");

  function setBar(percent) {
    if (!bar) return;
    percent = Math.max(0, Math.min(100, percent || 0));
    bar.style.width = percent.toFixed(1) + "%";
    bar.parentNode.setAttribute("aria-valuenow", Math.round(percent));
  }
  setBar(parseFloat(bar ? bar.dataset.percent : 0));

  var source = document.getElementById("run-live");
  if (!source) return;
  var live = JSON.parse(source.textContent);
  var since = live.since, evalSince = live.eval_since;
  var figures = {};
  Object.keys(live.charts).forEach(function (id) {
    var data = document.getElementById(id);
    if (data) figures[id] = JSON.parse(data.textContent);
  });

  function text(id, value) {
    var el = document.getElementById(id);
    if (el) el.textContent = value;
  }

  function duration(seconds) {
    if (typeof seconds !== "number" || !isFinite(seconds) || seconds < 0) return "";
    seconds = Math.round(seconds);
    var h = Math.floor(seconds / 3600), m = Math.floor((seconds % 3600) / 60), s = seconds % 60;
    function two(n) { return (n < 10 ? "0" : "") + n; }
    return h ? h + "h " + two(m) + "m" : m ? m + "m " + two(s) + "s" : s + "s";
  }

  function showProgress(data) {
    var p = data.progress || {};
    var status = document.getElementById("run-status");
    if (status) { status.textContent = data.status; status.className = "status status-" + data.status; }
    text("run-phase", p.phase || "");
    if (typeof p.step === "number") text("run-step", p.step);
    if (typeof p.total_steps === "number") text("run-total", p.total_steps);
    if (typeof p.epoch === "number") text("run-epoch", p.epoch.toFixed(2));
    var eta = duration(p.eta_seconds);
    text("run-eta", eta ? "about " + eta + " left" : "");
    var speed = [];
    if (p.examples_per_s) speed.push(p.examples_per_s.toFixed(1) + " examples/s");
    if (p.tokens_per_s) speed.push(Math.round(p.tokens_per_s) + " tokens/s");
    text("run-speed", speed.join(" · "));
    if (p.total_steps > 0 && typeof p.step === "number") setBar(100 * p.step / p.total_steps);
  }

  function lastStep(curves, previous) {
    Object.keys(curves || {}).forEach(function (key) {
      var steps = curves[key].steps;
      if (steps.length) previous = Math.max(previous, steps[steps.length - 1]);
    });
    return previous;
  }

  // Plotly.react redraws only what changed, and sees a change by a new array: concat, not push.
  function appendPoints(curves) {
    Object.keys(figures).forEach(function (id) {
      var figure = figures[id], changed = false;
      live.charts[id].forEach(function (ref, i) {
        var series = (curves[ref[0]] || {})[ref[1]], trace = figure.data[i];
        if (!series || !trace) return;
        var x = trace.x || [], y = trace.y || [], last = x.length ? x[x.length - 1] : -1, xs = [], ys = [];
        series.steps.forEach(function (step, j) {
          if (step > last) { xs.push(step); ys.push(series.values[j]); }
        });
        if (xs.length) { trace.x = x.concat(xs); trace.y = y.concat(ys); changed = true; }
      });
      var el = document.querySelector('[data-chart="' + id + '"]');
      if (changed && el && window.Plotly) {
        window.Plotly.react(el, figure.data, figure.layout, {displaylogo: false, responsive: true});
      }
    });
  }

  function poll() {
    var url = live.url + "?since=" + since + "&eval_since=" + evalSince;
    fetch(url, {credentials: "same-origin", headers: {Accept: "application/json"}})
      .then(function (response) {
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.json();
      })
      .then(function (data) {
        appendPoints(data.curves);
        since = lastStep(data.curves.train, since);
        evalSince = lastStep(data.curves.eval, evalSince);
        showProgress(data);
        if (data.finished) { window.location.reload(); return; }
        setTimeout(poll, POLL_MS);
      })
      .catch(function () { setTimeout(poll, RETRY_MS); });
  }
  setTimeout(poll, POLL_MS);
})();
