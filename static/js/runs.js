// A run's page: draw the progress bar, and while the run is active poll its live JSON every
// 2 s — update the status and progress text, append the new points to the curve charts, and
// once the run ends put the page in its final state in place (no reload, so the person
// reading it keeps their scroll position and nothing flashes).
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
  var since = live.since, evalSince = live.eval_since, shownStatus = live.status;
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

  // A message such as "Run 3 is queued." or "Cancel requested" described the state the page
  // was loaded in; once the run moves on it is stale, and wrong.
  function dropMessages() {
    var messages = document.querySelector("main > .messages");
    if (messages) messages.remove();
  }

  function showStatus(status) {
    var el = document.getElementById("run-status");
    if (el) { el.textContent = status; el.className = "status status-" + status; }
    if (status !== shownStatus) dropMessages();
    shownStatus = status;
  }

  function showProgress(data) {
    var p = data.progress || {};
    showStatus(data.status);
    text("run-phase", p.phase || "");
    if (typeof p.step === "number") text("run-step", p.step);
    if (typeof p.total_steps === "number") text("run-total", p.total_steps);
    if (typeof p.epoch === "number") text("run-epoch", p.epoch.toFixed(2));
    var eta = data.finished ? "" : duration(p.eta_seconds);
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

  // An empty chart is drawn without axes, with a "waiting" note (core/charts.py); its first
  // points bring the axes back and drop the note.
  function showAxes(layout) {
    if (!layout.meta || !layout.meta.waiting) return;
    layout.meta.waiting = false;
    layout.annotations = [];
    layout.xaxis = Object.assign({}, layout.xaxis, {visible: true});
    layout.yaxis = Object.assign({}, layout.yaxis, {visible: true});
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
        showAxes(figure.layout);
        window.Plotly.react(el, figure.data, figure.layout, {displaylogo: false, responsive: true});
      }
    });
  }

  // The final page (buttons, the evaluation, Resume) comes from the server, so that there is
  // one template for it; it replaces the content of <main> in place.
  function showFinal() {
    document.querySelectorAll("[data-while-active]").forEach(function (el) { el.remove(); });
    fetch(window.location.href, {credentials: "same-origin", headers: {Accept: "text/html"}})
      .then(function (response) {
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.text();
      })
      .then(function (html) {
        var fresh = new DOMParser().parseFromString(html, "text/html").querySelector("main");
        var main = document.querySelector("main");
        if (!fresh || !main) return;
        fresh.querySelectorAll(":scope > .messages").forEach(function (el) { el.remove(); });
        main.replaceChildren.apply(main, Array.prototype.slice.call(fresh.childNodes));
        var newBar = document.getElementById("run-bar");
        if (newBar) { bar = newBar; setBar(parseFloat(bar.dataset.percent)); }
        if (window.lifecycleCharts) document.querySelectorAll("main [data-chart]").forEach(window.lifecycleCharts.render);
      })
      .catch(function () { /* the page already shows the final status; a reload shows the rest */ });
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
        if (data.finished) { showFinal(); return; }
        setTimeout(poll, POLL_MS);
      })
      .catch(function () { setTimeout(poll, RETRY_MS); });
  }
  setTimeout(poll, POLL_MS);
})();
