/* The workflow page: server-rendered, kept current over /ws/workflows/<id>/?after=<seq>.
 *
 * Every persisted frame moves `lastSeq` on and schedules one refetch of the page, whose
 * live regions ([data-live-region]) replace ours; a reconnect resumes after `lastSeq`,
 * so no event is missed or applied twice. A `resync` (too far behind) reloads the page.
 * Token deltas of a running AI call (`ai.delta`, no seq) stream into a side box.
 *
 * Autopilot runs are the AI layer's: they come from GET <workflow api>/runs/ (session
 * auth) and `ai.run` frames. The buttons call the same REST API with the CSRF token from
 * the csrftoken cookie (X-CSRFToken), as Django's session authentication requires.
 */
(function () {
  "use strict";

  var Live = window.TopDogLive;
  var root = document.getElementById("workflow");
  if (!root) return;

  var lastSeq = Number(root.dataset.lastSeq || 0);
  var renderedSeq = lastSeq;
  var refreshing = false;
  var refreshAgain = false;
  var refreshTimer = null;

  // --- tabs ------------------------------------------------------------------------------
  var tabs = Array.prototype.slice.call(document.querySelectorAll('[role="tab"]'));

  function selectTab(name, focus) {
    tabs.forEach(function (tab) {
      var selected = tab.id === "tab-" + name;
      tab.setAttribute("aria-selected", selected ? "true" : "false");
      tab.tabIndex = selected ? 0 : -1;
      document.getElementById(tab.getAttribute("aria-controls")).hidden = !selected;
      if (selected && focus) tab.focus();
    });
    try {
      window.sessionStorage.setItem("topdog.tab", name);
    } catch (error) {
      /* storage may be off */
    }
  }

  tabs.forEach(function (tab, index) {
    tab.addEventListener("click", function () {
      selectTab(tab.id.replace("tab-", ""), false);
    });
    tab.addEventListener("keydown", function (event) {
      var step = event.key === "ArrowRight" ? 1 : event.key === "ArrowLeft" ? -1 : 0;
      if (!step) return;
      var next = tabs[(index + step + tabs.length) % tabs.length];
      selectTab(next.id.replace("tab-", ""), true);
      event.preventDefault();
    });
  });

  function revealTarget(hash) {
    if (!hash || hash.length < 2) return;
    var target = document.getElementById(hash.slice(1));
    if (!target) return;
    var panel = target.closest('[role="tabpanel"]');
    if (panel) selectTab(panel.id.replace("panel-", ""), false);
    for (var node = target; node; node = node.parentElement) {
      if (node.tagName === "DETAILS") node.open = true;
    }
    target.scrollIntoView({ block: "start", behavior: "smooth" });
    target.classList.add("is-target");
    window.setTimeout(function () {
      target.classList.remove("is-target");
    }, 2000);
  }

  document.addEventListener("click", function (event) {
    var link = event.target.closest('a[href^="#"]');
    if (!link) return;
    var hash = link.getAttribute("href");
    if (!document.getElementById(hash.slice(1))) return;
    event.preventDefault();
    window.history.replaceState(null, "", hash);
    revealTarget(hash);
  });

  var savedTab = null;
  try {
    savedTab = window.sessionStorage.getItem("topdog.tab");
  } catch (error) {
    savedTab = null;
  }
  selectTab(savedTab && document.getElementById("tab-" + savedTab) ? savedTab : "evidence", false);
  revealTarget(window.location.hash);
  Live.localiseTimes(document);

  // --- live refresh ----------------------------------------------------------------------
  function scheduleRefresh() {
    if (refreshTimer) return;
    refreshTimer = window.setTimeout(refresh, 120);
  }

  function refresh() {
    refreshTimer = null;
    if (refreshing) {
      refreshAgain = true;
      return;
    }
    refreshing = true;
    window
      .fetch(window.location.pathname, { credentials: "same-origin", headers: { Accept: "text/html" } })
      .then(function (response) {
        if (response.status === 404) {
          showNotice("This workflow is no longer visible to you.");
          return null;
        }
        if (!response.ok || response.redirected) {
          window.location.reload();
          return null;
        }
        return response.text();
      })
      .then(function (html) {
        if (html) swapRegions(new DOMParser().parseFromString(html, "text/html"));
        fetchRuns();
      })
      .catch(function () {
        refreshAgain = true; // offline for a moment: try again with the next frame
      })
      .then(function () {
        refreshing = false;
        if (refreshAgain) {
          refreshAgain = false;
          scheduleRefresh();
        }
      });
  }

  function swapRegions(fresh) {
    var openState = {};
    var details = root.querySelectorAll("[data-live-region] details[id]");
    for (var i = 0; i < details.length; i++) openState[details[i].id] = details[i].open;

    var typed = {};
    var areas = root.querySelectorAll("[data-live-region] textarea[id]");
    for (var t = 0; t < areas.length; t++) typed[areas[t].id] = areas[t].value;

    var regions = root.querySelectorAll("[data-live-region][id]");
    for (var j = 0; j < regions.length; j++) {
      var replacement = fresh.getElementById(regions[j].id);
      if (replacement) regions[j].innerHTML = replacement.innerHTML;
    }

    Object.keys(typed).forEach(function (id) {
      var area = document.getElementById(id);
      if (area) area.value = typed[id];
    });

    Object.keys(openState).forEach(function (id) {
      var node = document.getElementById(id);
      if (node && node.tagName === "DETAILS") node.open = openState[id];
    });

    var freshRoot = fresh.getElementById("workflow");
    var freshSeq = freshRoot ? Number(freshRoot.dataset.lastSeq || 0) : renderedSeq;
    var entries = root.querySelectorAll(".tl-entry[data-seq]");
    for (var k = 0; k < entries.length; k++) {
      if (Number(entries[k].dataset.seq) > renderedSeq) entries[k].classList.add("is-new");
    }
    renderedSeq = Math.max(renderedSeq, freshSeq);
    root.dataset.renderedSeq = String(renderedSeq);
    if (fresh.title) document.title = fresh.title;
    Live.localiseTimes(root);
    renderRuns();
    if (renderedSeq < lastSeq) scheduleRefresh();
  }

  function showNotice(text) {
    var notice = document.getElementById("live-notice");
    if (!notice) {
      notice = document.createElement("p");
      notice.id = "live-notice";
      notice.className = "notice notice-failed";
      notice.setAttribute("role", "alert");
      root.insertBefore(notice, root.firstChild);
    }
    notice.textContent = text;
  }

  // --- AI streaming box ------------------------------------------------------------------
  var stream = document.getElementById("ai-stream");
  var streamText = document.getElementById("ai-stream-text");
  var streamRole = document.getElementById("ai-stream-role");

  function onDelta(frame) {
    var data = frame.data || {};
    var text = data.text || data.delta || frame.text || frame.delta || "";
    if (!text) return;
    stream.hidden = false;
    streamRole.textContent = Live.label(data.role || frame.role || "AI");
    streamText.textContent += text;
    streamText.scrollTop = streamText.scrollHeight;
  }

  function endStream() {
    stream.hidden = true;
    streamText.textContent = "";
  }

  // --- sandbox output box -------------------------------------------------------------------
  var checkStream = document.getElementById("check-stream");
  var checkText = document.getElementById("check-stream-text");
  var CHECK_TEXT_MAX = 64 * 1024;

  function onCheckOutput(frame) {
    var lines = frame.lines || [];
    if (!lines.length) return;
    checkStream.hidden = false;
    var text = checkText.textContent + lines.join("\n") + "\n";
    checkText.textContent = text.length > CHECK_TEXT_MAX ? text.slice(-CHECK_TEXT_MAX) : text;
    checkText.scrollTop = checkText.scrollHeight;
  }

  // --- autopilot runs and actions --------------------------------------------------------
  var autopilot = document.getElementById("autopilot");
  var runsBody = document.getElementById("runs-body");
  var runSummary = document.getElementById("run-summary");
  var runBanner = document.getElementById("run-banner");
  var actionError = document.getElementById("action-error");
  var canRun = autopilot.dataset.canRun === "1";
  var runs = []; // newest first, as the API lists them
  var runsLoaded = false;
  var ACTIVE = { queued: true, running: true, waiting: true };

  function isActive(run) {
    return Boolean(run && ACTIVE[run.status]);
  }

  function fetchRuns() {
    window
      .fetch(autopilot.dataset.runsUrl, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) {
        return response.ok ? response.json() : null;
      })
      .then(function (body) {
        if (!body) return;
        var known = {};
        runs.forEach(function (run) {
          known[run.id] = run;
        });
        runs = (body.results || []).map(function (run) {
          return latest(known[run.id], run);
        });
        runsLoaded = true;
        renderRuns();
      })
      .catch(function () {
        /* offline for a moment: the next frame or refresh tries again */
      });
  }

  // A run never starts again once it has ended. An answer read before it ended (the
  // cancel request's own response, a list fetched a moment earlier) can arrive after the
  // `ai.run` frame that ended it; it must not show the run active again, since no later
  // frame would correct it.
  function latest(known, incoming) {
    return known && !isActive(known) && isActive(incoming) ? known : incoming;
  }

  function upsertRun(run) {
    if (!run || !run.id) return;
    for (var i = 0; i < runs.length; i++) {
      if (runs[i].id === run.id) {
        runs[i] = latest(runs[i], run);
        renderRuns();
        return;
      }
    }
    runs.unshift(run);
    runsLoaded = true;
    renderRuns();
  }

  function cell(row, text, className) {
    var td = document.createElement("td");
    if (className) td.className = className;
    td.textContent = text;
    row.appendChild(td);
    return td;
  }

  function fill(td, text, className) {
    if (td.textContent !== text) td.textContent = text;
    if (td.className !== (className || "")) td.className = className || "";
  }

  // Rows are kept per run and updated in place: a row built anew for every `ai.run`
  // frame would replace its Cancel button under the pointer while a run works, losing a
  // click that lands between two frames.
  var rowsById = {};

  function runRow(run) {
    var row = rowsById[run.id];
    if (!row) {
      row = document.createElement("tr");
      row.dataset.runId = run.id;
      row.setAttribute("data-testid", "run-row");
      for (var c = 0; c < 9; c++) row.appendChild(document.createElement("td"));
      var chip = document.createElement("span");
      chip.setAttribute("data-testid", "run-status");
      row.cells[0].appendChild(chip);
      rowsById[run.id] = row;
    }
    row.dataset.status = run.status;
    var status = row.cells[0].firstChild;
    fill(status, run.status, "chip chip-" + run.status);
    fill(row.cells[1], Live.label(run.phase) + (run.scope === "phase" ? " (this phase only)" : ""));
    fill(row.cells[2], String(run.phases_completed), "num");
    fill(row.cells[3], String(run.attempts), "num");
    fill(row.cells[4], run.input_tokens + " / " + run.output_tokens, "num");
    fill(row.cells[5], "$" + run.cost_usd, "num");
    fill(row.cells[6], run.provider ? run.provider + " " + run.model : "—");
    fill(row.cells[7], run.error || run.stop_reason || "", run.error ? "run-error" : "muted");
    var cancel = row.cells[8].querySelector('[data-action="cancel-run"]');
    var cancellable = canRun && isActive(run);
    if (cancellable && !cancel) {
      cancel = document.createElement("button");
      cancel.type = "button";
      cancel.className = "button small";
      cancel.dataset.action = "cancel-run";
      cancel.dataset.runId = run.id;
      cancel.textContent = "Cancel run";
      row.cells[8].appendChild(cancel);
    } else if (cancel && !cancellable) {
      cancel.remove();
    }
    return row;
  }

  function renderRuns() {
    if (!runsLoaded) return;
    var rows = runs.map(runRow);
    rowsById = {}; // only the listed runs' rows are kept
    rows.forEach(function (row) {
      rowsById[row.dataset.runId] = row;
    });
    Array.prototype.slice.call(runsBody.children).forEach(function (child) {
      if (rows.indexOf(child) < 0) child.remove();
    });
    rows.forEach(function (row, i) {
      if (runsBody.children[i] !== row) runsBody.insertBefore(row, runsBody.children[i] || null);
    });
    if (!runs.length) {
      var empty = document.createElement("tr");
      cell(empty, "No autopilot runs yet." + (canRun ? " Start one to have the AI roles work the phases." : ""), "empty-note").colSpan = 9;
      runsBody.appendChild(empty);
    }
    var latest = runs[0];
    var active = isActive(latest);
    runSummary.textContent = !latest
      ? "none yet"
      : active
      ? "a run is " + latest.status + (latest.status === "waiting" ? "" : " in " + Live.label(latest.phase))
      : "last run " + latest.status;
    var failed = latest && latest.status === "failed";
    runBanner.hidden = !failed;
    runBanner.textContent = failed ? failureText(latest) : "";
    var starts = root.querySelectorAll("[data-start-controls]");
    for (var i = 0; i < starts.length; i++) starts[i].hidden = active;
    var notes = root.querySelectorAll("[data-waiting-note]");
    for (var j = 0; j < notes.length; j++) {
      if (failed) notes[j].textContent = "No evidence: the autopilot run failed (see above).";
      else if (active && latest.status === "running") notes[j].textContent = "The autopilot is working on it…";
    }
  }

  function failureText(run) {
    // The runner prefixes the phase ("DISCOVERY: ..."); the banner names it already.
    var error = (run.error || "no reason given").replace(new RegExp("^" + run.phase + ": "), "");
    var advice = canRun ? " — fix the cause, then start a new run." : "";
    return "The autopilot run failed in " + Live.label(run.phase) + ": " + error + advice;
  }

  function csrfToken() {
    var match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
    return match ? decodeURIComponent(match[1]) : "";
  }

  function post(url, body) {
    return window
      .fetch(url, {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", Accept: "application/json", "X-CSRFToken": csrfToken() },
        body: JSON.stringify(body || {}),
      })
      .then(function (response) {
        return response
          .json()
          .catch(function () {
            return {};
          })
          .then(function (data) {
            if (!response.ok) throw new Error(data.detail || "the request failed (" + response.status + ")");
            return data;
          });
      });
  }

  function act(button) {
    var action = button.dataset.action;
    var request;
    if (action === "start-run") {
      var scope = document.getElementById("run-scope");
      request = post(autopilot.dataset.runsUrl, { scope: scope ? scope.value : "workflow" }).then(upsertRun);
    } else if (action === "cancel-run") {
      request = post(autopilot.dataset.runsUrl + button.dataset.runId + "/cancel/").then(upsertRun);
    } else if (action === "approve") {
      request = post(autopilot.dataset.transitionsUrl, { transition: "approve" });
    } else if (action === "reject") {
      var feedback = document.getElementById("reject-feedback");
      if (!feedback || !feedback.value.trim()) {
        showActionError("Say what must change before rejecting.");
        if (feedback) feedback.focus();
        return;
      }
      request = post(autopilot.dataset.transitionsUrl, { transition: "reject", feedback: feedback.value });
    } else {
      return;
    }
    button.disabled = true;
    showActionError("");
    request
      .then(function () {
        scheduleRefresh();
      })
      .catch(function (error) {
        showActionError(error.message);
      })
      .then(function () {
        button.disabled = false;
      });
  }

  function showActionError(text) {
    actionError.hidden = !text;
    actionError.textContent = text;
  }

  autopilot.addEventListener("input", function (event) {
    if (event.target.id === "reject-feedback") showActionError("");
  });

  autopilot.addEventListener("click", function (event) {
    var button = event.target.closest("button[data-action]");
    if (button && !button.disabled) act(button);
  });

  fetchRuns();

  // --- the socket ------------------------------------------------------------------------
  Live.connect({
    path: function () {
      return root.dataset.wsPath + "?after=" + lastSeq;
    },
    onFrame: function (frame) {
      if (typeof frame.seq === "number") {
        if (frame.seq <= lastSeq) return;
        lastSeq = frame.seq;
        root.dataset.lastSeq = String(lastSeq);
        if (frame.type === "message.created" || frame.type === "phase.completed") endStream();
        scheduleRefresh();
      } else if (frame.type === "replay.done" || frame.type === "heartbeat") {
        if (frame.last_seq > renderedSeq) scheduleRefresh();
      } else if (frame.type === "ai.delta") {
        onDelta(frame);
      } else if (frame.type === "ai.run") {
        upsertRun(frame.run);
        if (!isActive(frame.run)) endStream();
      } else if (frame.type === "check.output") {
        onCheckOutput(frame);
      } else if (frame.type === "resync") {
        window.location.reload();
      }
    },
    onOpen: fetchRuns,
    onClose: function (event) {
      var CLOSE = Live.CLOSE;
      if (event.code === CLOSE.RESYNC || event.code === CLOSE.UNAUTHORISED) {
        window.location.reload();
        return "stop";
      }
      if (event.code === CLOSE.NOT_FOUND || event.code === CLOSE.BAD_REQUEST) {
        showNotice("Live updates stopped: this workflow is not available.");
        return "stop";
      }
      return null;
    },
  });
})();
