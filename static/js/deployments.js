// A deployment's page while it is open: a rollback that waits for the serving processes is
// polled (about once a second) until every live one answers only from stable, then its
// time-to-rollback is written in place; the last hour's charts are redrawn from the metrics
// API every 15 s; and if the deployment's routes change meanwhile (an automatic rollback, a
// promotion), a notice offers the page as it is now. Nothing is polled while the page is hidden.
(function () {
  var ROLLBACK_MS = 1000, ROLLBACK_MAX_MS = 3000, CHARTS_MS = 15000, WATCH_MS = 10000, RETRY_MS = 5000;

  function getJSON(url) {
    return fetch(url, {credentials: "same-origin", headers: {Accept: "application/json"}})
      .then(function (response) { if (!response.ok) throw new Error("HTTP " + response.status); return response.json(); });
  }

  // Run `task` now and again after `ms` (or the delay it asks for) until it answers false;
  // paused while the page is hidden, resumed when it shows again (never two at once).
  function every(ms, task) {
    var timer = null, stopped = false, busy = false;
    function run() {
      timer = null;
      if (stopped || busy) return;
      busy = true;
      task(function (next) {
        busy = false;
        if (stopped || next === false) { stopped = true; return; }
        timer = document.hidden ? null : setTimeout(run, typeof next === "number" ? next : ms);
      });
    }
    document.addEventListener("visibilitychange", function () {
      if (!document.hidden && timer === null && !stopped) run();
    });
    return run;
  }

  function ms(value) { return Math.round(value) + " ms"; }

  // --- a rollback waiting for the serving processes
  document.querySelectorAll("[data-rollback-watch]").forEach(function (root) {
    if (root.dataset.completed === "yes") return;
    var state = root.querySelector('[data-rollback-field="state"]'), delay = ROLLBACK_MS;
    every(ROLLBACK_MS, function (again) {
      getJSON(root.dataset.url).then(function (data) {
        if (!data.completed) {
          delay = Math.min(ROLLBACK_MAX_MS, delay * 1.2);
          return again(delay);
        }
        root.dataset.completed = "yes";
        state.textContent = "Every live serving process answers only from stable (" + data.processes.length +
          " reported): time to rollback ";
        var strong = document.createElement("strong"), time = document.createElement("span");
        time.id = "time-to-rollback";
        time.textContent = ms(data.time_to_rollback_ms);
        strong.appendChild(time);
        state.appendChild(strong);
        state.appendChild(document.createTextNode("."));
        again(false);
      }).catch(function () { again(RETRY_MS); });
    })();
  });

  // --- the last hour's charts
  var charts = document.getElementById("traffic-charts");
  if (charts && window.Plotly) {
    setTimeout(every(CHARTS_MS, function (again) {
      getJSON(charts.dataset.metricsUrl).then(function (data) {
        Object.keys(data.charts).forEach(function (id) {
          var el = charts.querySelector('[data-chart="' + id + '"]'), figure = data.charts[id];
          if (el) window.Plotly.react(el, figure.data, figure.layout, {displaylogo: false, responsive: true});
        });
        again();
      }).catch(function () { again(RETRY_MS); });
    }), CHARTS_MS);
  }

  // --- the routes changed since the page was drawn
  var watch = document.getElementById("deployment-watch");
  if (watch) {
    setTimeout(every(WATCH_MS, function (again) {
      getJSON(watch.dataset.url).then(function (data) {
        if (String(data.generation) !== watch.dataset.generation) {
          var notice = document.getElementById("deployment-changed");
          if (notice) notice.hidden = false;
          return again(false);
        }
        again();
      }).catch(function () { again(RETRY_MS); });
    }), WATCH_MS);
  }
})();
