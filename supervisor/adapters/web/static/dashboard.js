// The dashboard's own script: the charts (uPlot) of the run and compare pages, drawn from
// the JSON API. htmx does the live fragments. Loaded from this origin only (the CSP allows
// nothing else); every text from a run goes in with textContent, never as HTML.
(function () {
  "use strict";

  // Each chart drawn, by name: what the browser tests read (series, points).
  var charts = {};
  window.supervisorCharts = charts;
  var PALETTE = ["#0969da", "#cf222e", "#1a7f37", "#9a6700", "#8250df", "#bf3989",
                 "#0a7b83", "#e16f24", "#57606a", "#6639ba"];

  function cssVar(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  }

  function widthOf(element) {
    return Math.max(260, Math.floor(element.getBoundingClientRect().width) - 4);
  }

  // Points of several series ([[x, y], ...] each) on one x axis, as uPlot takes them.
  function align(seriesPoints) {
    var xs = {};
    seriesPoints.forEach(function (points) {
      points.forEach(function (p) { xs[p[0]] = true; });
    });
    var x = Object.keys(xs).map(Number).sort(function (a, b) { return a - b; });
    var index = {};
    x.forEach(function (value, i) { index[value] = i; });
    var data = [x];
    seriesPoints.forEach(function (points) {
      var ys = x.map(function () { return null; });
      points.forEach(function (p) { ys[index[p[0]]] = p[1]; });
      data.push(ys);
    });
    return data;
  }

  function draw(name, container, title, labels, seriesPoints) {
    if (charts[name]) { charts[name].destroy(); delete charts[name]; }
    container.textContent = "";
    if (typeof uPlot === "undefined") { return null; }
    var fg = cssVar("--fg"), grid = cssVar("--grid");
    var data = align(seriesPoints);
    var many = data[0].length > 60;
    var series = [{ label: "step" }];
    labels.forEach(function (label, i) {
      series.push({ label: label, stroke: PALETTE[i % PALETTE.length], width: 2,
                    spanGaps: true, points: { show: !many } });
    });
    var axis = { stroke: fg, grid: { stroke: grid }, ticks: { stroke: grid } };
    var chart = new uPlot({
      title: title, width: widthOf(container), height: 240,
      scales: { x: { time: false } }, series: series, axes: [axis, axis],
    }, data, container);
    chart.root.dataset.chart = name;
    charts[name] = chart;
    return chart;
  }

  function checkbox(parent, label, checked, onChange) {
    var wrapper = document.createElement("label");
    var box = document.createElement("input");
    box.type = "checkbox";
    box.checked = checked;
    box.value = label;
    box.addEventListener("change", onChange);
    wrapper.appendChild(box);
    wrapper.appendChild(document.createTextNode(" " + label));
    parent.appendChild(wrapper);
    return box;
  }

  function getJson(url) {
    return fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (reply) {
        if (!reply.ok) { throw new Error(url + ": " + reply.status); }
        return reply.json();
      });
  }

  // -- the run page: one chart per metric of the history, chosen with checkboxes ---------------
  function metricNames(records) {
    var names = [];
    records.forEach(function (record) {
      Object.keys(record).forEach(function (key) {
        var value = record[key];
        if (key !== "step" && typeof value === "number" && names.indexOf(key) < 0) {
          names.push(key);
        }
      });
    });
    return names;
  }

  function pointsOf(records, metric) {
    var points = [];
    records.forEach(function (record, i) {
      var value = record[metric];
      if (typeof value !== "number") { return; }
      var step = typeof record.step === "number" ? record.step : i;
      points.push([step, value]);
    });
    return points;
  }

  function runCharts(section) {
    var picks = document.getElementById("metric-picks");
    var area = document.getElementById("chart-area");
    if (!picks || !area) { return; }
    getJson(section.dataset.historyUrl).then(function (records) {
      var names = metricNames(records);
      var holders = {};
      names.forEach(function (name, i) {
        var holder = document.createElement("div");
        holder.className = "chart";
        holder.dataset.metric = name;
        area.appendChild(holder);
        holders[name] = holder;
        var show = function (on) {
          holder.hidden = !on;
          if (on) { draw("metric:" + name, holder, name, [name], [pointsOf(records, name)]); }
          else if (charts["metric:" + name]) { charts["metric:" + name].destroy(); delete charts["metric:" + name]; }
        };
        var box = checkbox(picks, name, i < 4, function () { show(box.checked); });
        show(box.checked);
      });
    }).catch(function (error) { area.textContent = String(error); });
  }

  // -- the compare page: the groups' mean curves, and chosen runs overlaid ------------------
  function compareCharts(section) {
    var chosen = JSON.parse(section.dataset.chosen || "[]");
    getJson(section.dataset.curvesUrl).then(function (curves) {
      draw("compare-groups", document.getElementById("group-chart"),
           curves.metric + " by " + curves.by,
           curves.groups.map(function (g) { return g.label; }),
           curves.groups.map(function (g) { return g.points; }));
      var picks = document.getElementById("run-picks");
      var boxes = [];
      var redraw = function () {
        var runs = curves.runs.filter(function (r, i) { return boxes[i].checked; });
        draw("compare-runs", document.getElementById("runs-chart"), curves.metric,
             runs.map(function (r) { return r.run_id + " (" + r.group + ")"; }),
             runs.map(function (r) { return r.points; }));
      };
      curves.runs.forEach(function (run) {
        boxes.push(checkbox(picks, run.run_id, chosen.indexOf(run.run_id) >= 0, redraw));
      });
      if (!curves.runs.length) { picks.textContent = "No run of these groups reported a history of " + curves.metric + "."; }
      redraw();
    }).catch(function (error) { section.appendChild(document.createTextNode(String(error))); });
  }

  function resize() {
    Object.keys(charts).forEach(function (name) {
      var chart = charts[name];
      var holder = chart.root.parentNode;
      if (holder) { chart.setSize({ width: widthOf(holder), height: 240 }); }
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var runSection = document.getElementById("charts");
    if (runSection && runSection.dataset.historyUrl) { runCharts(runSection); }
    var compareSection = document.getElementById("compare-charts");
    if (compareSection) { compareCharts(compareSection); }
    var pending = null;
    window.addEventListener("resize", function () {
      clearTimeout(pending);
      pending = setTimeout(resize, 150);
    });
  });
})();
