// Draws every chart on the page: each figure's data and layout are JSON in a <script> element the
// chart's container names (data-chart). plotly.js is served by the console from the plotly package.
"use strict";
(function () {
  var config = {displayModeBar: false, responsive: true};
  document.querySelectorAll("[data-chart]").forEach(function (el) {
    var spec = JSON.parse(document.getElementById(el.dataset.chart).textContent);
    window.Plotly.newPlot(el, spec.data, spec.layout, config).then(function () {
      el.dataset.drawn = "true";
    });
  });
})();
