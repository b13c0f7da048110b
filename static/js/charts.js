// Render every <div data-chart="ID"> from the JSON in <script id="ID" type="application/json">.
(function () {
  function render(el) {
    var source = document.getElementById(el.dataset.chart);
    if (!source || !window.Plotly) return;
    var figure = JSON.parse(source.textContent);
    window.Plotly.react(el, figure.data, figure.layout, {displaylogo: false, responsive: true});
  }
  window.lifecycleCharts = {render: render};
  document.querySelectorAll("[data-chart]").forEach(render);
})();
