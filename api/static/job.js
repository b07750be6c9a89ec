// The job page of a live job: follow its event stream and update the page in place. Progress events
// move the bars; stage and status events fetch the page once more and take over only what changed, so
// images already shown are never fetched again.
(function () {
  "use strict";
  var article = document.getElementById("job");
  if (!article || !window.EventSource) return;
  var TERMINAL = ["succeeded", "failed", "canceled"];
  var source = new EventSource("/admin/jobs/" + encodeURIComponent(article.dataset.jobId) + "/events");
  var inFlight = null;
  var again = false;

  function stageRow(name) {
    var rows = document.querySelectorAll("#stages tr.stage");
    for (var i = 0; i < rows.length; i++) if (rows[i].dataset.stage === name) return rows[i];
    return null;
  }

  function showProgress(name, fraction) {
    var row = stageRow(name);
    if (!row) return;
    var bar = row.querySelector("progress");
    var pct = row.querySelector(".pct");
    if (bar) bar.value = fraction;
    if (pct) pct.textContent = Math.round(100 * fraction) + "%";
  }

  function showStatus(element, status) {
    if (!element) return;
    element.textContent = status;
    element.className = "status status-" + status;
  }

  function replaceById(fresh, id) {
    var now = document.getElementById(id);
    var next = fresh.getElementById(id);
    if (now && next) now.replaceWith(document.importNode(next, true));
  }

  // New images only: a figure the page already shows keeps its element (and its loaded image).
  function mergeImages(fresh) {
    var now = document.getElementById("images-card");
    var next = fresh.getElementById("images-card");
    if (!now || !next) return;
    if (!now.querySelector("#images")) {
      if (next.querySelector("#images")) now.replaceWith(document.importNode(next, true));
      return;
    }
    var section = now.querySelector("#images");
    next.querySelectorAll(".stage-images").forEach(function (group) {
      var have = null;
      section.querySelectorAll(".stage-images").forEach(function (g) {
        if (g.dataset.stage === group.dataset.stage) have = g;
      });
      if (!have) {
        section.appendChild(document.importNode(group, true));
        return;
      }
      var thumbs = have.querySelector(".thumbs");
      group.querySelectorAll("figure.thumb").forEach(function (figure) {
        var shown = false;
        thumbs.querySelectorAll("figure.thumb").forEach(function (f) {
          if (f.dataset.index === figure.dataset.index) shown = true;
        });
        if (!shown) thumbs.appendChild(document.importNode(figure, true));
      });
    });
  }

  function merge(fresh) {
    var next = fresh.getElementById("job");
    if (!next) return;
    article.dataset.status = next.dataset.status;
    ["job-status", "actions", "facts", "stages", "caption-card", "deliveries"].forEach(function (id) {
      replaceById(fresh, id);
    });
    mergeImages(fresh);
  }

  function refresh() {
    if (inFlight) {
      again = true;
      return inFlight;
    }
    inFlight = fetch(location.pathname, { credentials: "same-origin", headers: { Accept: "text/html" } })
      .then(function (response) {
        if (!response.ok || response.redirected) throw new Error("job page: " + response.status);
        return response.text();
      })
      .then(function (html) {
        merge(new DOMParser().parseFromString(html, "text/html"));
      })
      .catch(function () {})
      .then(function () {
        inFlight = null;
        if (again) {
          again = false;
          return refresh();
        }
      });
    return inFlight;
  }

  source.addEventListener("progress", function (event) {
    var data = JSON.parse(event.data);
    showProgress(data.stage, data.progress);
  });
  source.addEventListener("stage", function (event) {
    var data = JSON.parse(event.data);
    var row = stageRow(data.name);
    if (row) {
      row.dataset.status = data.status;
      showStatus(row.querySelector(".status"), data.status);
      if (data.status === "succeeded") showProgress(data.name, 1);
    }
    refresh();
  });
  source.addEventListener("status", function (event) {
    var data = JSON.parse(event.data);
    showStatus(document.getElementById("job-status"), data.status);
    refresh();
  });
  source.addEventListener("done", function () {
    source.close();
    refresh();
  });
  // A stream refused (signed out, or too many open) would only be retried in a loop: stop, keep the page.
  source.addEventListener("error", function () {
    if (source.readyState === EventSource.CLOSED && TERMINAL.indexOf(article.dataset.status) < 0) refresh();
  });
})();
