// rigfleet dashboard: theme switch, selection helpers and the live feed. Everything a rig sent
// is written with textContent, never as HTML.
(function () {
  "use strict";
  var root = document.documentElement;
  try {
    var saved = window.localStorage.getItem("rf-theme");
    if (saved === "light" || saved === "dark") root.dataset.theme = saved;
  } catch (e) { /* storage blocked: keep the default */ }

  function ready(fn) {
    if (document.readyState !== "loading") fn();
    else document.addEventListener("DOMContentLoaded", fn);
  }

  ready(function () {
    var toggle = document.getElementById("theme-toggle");
    if (toggle) toggle.addEventListener("click", function () {
      var next = root.dataset.theme === "light" ? "dark" : "light";
      root.dataset.theme = next;
      try { window.localStorage.setItem("rf-theme", next); } catch (e) { /* ignore */ }
    });

    var page = document.getElementById("select-page");
    if (page) page.addEventListener("change", function () {
      document.querySelectorAll("input.row-select").forEach(function (c) { c.checked = page.checked; });
    });

    document.querySelectorAll("form.confirm").forEach(function (f) {
      f.addEventListener("submit", function (ev) {
        if (!window.confirm(f.dataset.confirm || "Sure?")) ev.preventDefault();
      });
    });

    document.querySelectorAll("button.copy").forEach(function (b) {
      b.addEventListener("click", function () {
        var el = document.getElementById(b.dataset.copy);
        if (el && navigator.clipboard) navigator.clipboard.writeText(el.textContent);
      });
    });

    var url = document.body.dataset.live;
    if (url && window.EventSource) live(url);
  });

  var STATUSES = ["st-online", "st-warning", "st-offline"];

  function setFields(el, data) {
    el.querySelectorAll("[data-f]").forEach(function (cell) {
      var v = data[cell.dataset.f];
      if (typeof v === "string" && cell.textContent !== v) cell.textContent = v;
    });
  }

  function live(url) {
    var state = document.getElementById("live-state");
    var es = new EventSource(url);
    // Close the stream when leaving the page: browsers hold only a few connections per server,
    // and a page kept in the back/forward cache would otherwise keep its stream open.
    window.addEventListener("pagehide", function () { es.close(); });
    es.addEventListener("open", function () { if (state) state.textContent = "live"; });
    es.addEventListener("error", function () { if (state) state.textContent = "reconnecting…"; });
    es.addEventListener("rigs", function (ev) {
      var batch;
      try { batch = JSON.parse(ev.data); } catch (e) { return; }
      var byId = {};
      (batch.rigs || []).forEach(function (r) { byId[r.id] = r; });
      document.querySelectorAll("[data-rig]").forEach(function (el) {
        var r = byId[el.dataset.rig];
        if (!r) return;
        STATUSES.forEach(function (c) { el.classList.remove(c); });
        el.classList.add("st-" + r.status);
        setFields(el, r);
      });
      var devs = {};
      (batch.devices || []).forEach(function (d) { devs[d.id] = d; });
      document.querySelectorAll("[data-dev]").forEach(function (el) {
        var d = devs[el.dataset.dev];
        if (d) setFields(el, d);
      });
      if (batch.fleet) {
        ["fleet-total", "fleet-online", "fleet-warning", "fleet-offline"].forEach(function (id, i) {
          var el = document.getElementById(id);
          if (el) el.textContent = String(batch.fleet[i]);
        });
      }
      if (state) state.textContent = "live · updated " + new Date().toLocaleTimeString();
    });
  }
})();
