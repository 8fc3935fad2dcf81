/* The workflow page: server-rendered, kept current over /ws/workflows/<id>/?after=<seq>.
 *
 * Every persisted frame moves `lastSeq` on and schedules one refetch of the page, whose
 * live regions ([data-live-region]) replace ours; a reconnect resumes after `lastSeq`,
 * so no event is missed or applied twice. A `resync` (too far behind) reloads the page.
 * Token deltas of a running AI call (`ai.delta`, no seq) stream into a side box.
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

    var regions = root.querySelectorAll("[data-live-region][id]");
    for (var j = 0; j < regions.length; j++) {
      var replacement = fresh.getElementById(regions[j].id);
      if (replacement) regions[j].innerHTML = replacement.innerHTML;
    }

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
      } else if (frame.type === "check.output") {
        onCheckOutput(frame);
      } else if (frame.type === "resync") {
        window.location.reload();
      }
    },
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
