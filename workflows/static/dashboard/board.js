/* The board: workflow cards in a column per phase, moved live from /ws/dashboard/.
 *
 * The page embeds a first snapshot so cards show before the socket opens; the socket's
 * own snapshot replaces it (and every reconnect does the same, so nothing missed while
 * offline stays wrong). `workflow.changed` frames carry the whole summary of the changed
 * workflow; a summary older than the one shown (lower last_seq) is ignored.
 */
(function () {
  "use strict";

  var Live = window.TopDogLive;
  var board = document.getElementById("board");
  if (!board) return;

  var PHASES = ["DISCOVERY", "PLANNING", "IMPLEMENTATION", "TESTING", "VERIFICATION", "DEPLOYMENT"];
  var DONE = "DONE";
  var workflowUrl = board.dataset.workflowUrl;
  var filterInput = document.getElementById("board-filter");
  var totalEl = document.getElementById("board-total");
  var summaries = new Map();
  var cards = new Map();

  function columnOf(summary) {
    return PHASES.indexOf(summary.state) >= 0 ? summary.state : DONE;
  }

  function columnEl(key) {
    return board.querySelector('[data-column="' + key + '"]');
  }

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  }

  function formatTokens(count) {
    if (count >= 1000000) return (count / 1000000).toFixed(1) + "M";
    if (count >= 1000) return (count / 1000).toFixed(1) + "k";
    return String(count);
  }

  function buildCard(summary) {
    var card = el("article", "card");
    card.setAttribute("role", "listitem");
    card.dataset.workflowId = summary.id;
    card.dataset.state = summary.state;

    var title = el("a", "card-title", summary.title);
    title.href = workflowUrl.replace("__id__", encodeURIComponent(summary.id));
    card.appendChild(title);

    var meta = el("div", "card-meta");
    meta.appendChild(el("span", "card-project", summary.project));
    if (summary.current_role) meta.appendChild(el("span", "card-role", Live.label(summary.current_role)));
    card.appendChild(meta);

    var badges = el("div", "card-badges");
    if (columnOf(summary) === DONE) {
      badges.appendChild(el("span", "badge badge-" + summary.state.toLowerCase(), Live.label(summary.state)));
    }
    if (summary.awaiting_approval) badges.appendChild(el("span", "badge badge-approval", "Awaiting approval"));
    if (summary.regression_count) {
      var word = summary.regression_count === 1 ? " regression" : " regressions";
      badges.appendChild(el("span", "badge badge-regression", "↺ " + summary.regression_count + word));
    }
    if (badges.childNodes.length) card.appendChild(badges);

    var percent = Math.round((summary.progress || 0) * 100);
    var progress = el("div", "progress");
    progress.setAttribute("role", "progressbar");
    progress.setAttribute("aria-valuemin", "0");
    progress.setAttribute("aria-valuemax", "100");
    progress.setAttribute("aria-valuenow", String(percent));
    progress.setAttribute("aria-label", "Progress");
    var bar = el("div", "progress-bar");
    bar.style.width = percent + "%";
    progress.appendChild(bar);
    card.appendChild(progress);

    var foot = el("div", "card-foot");
    var done = Math.round((summary.progress || 0) * PHASES.length);
    foot.appendChild(el("span", "card-phases", done + "/" + PHASES.length + " phases"));
    var tokens = (summary.input_tokens || 0) + (summary.output_tokens || 0);
    var cost = Number(summary.cost_usd || 0);
    if (tokens || cost) {
      var usage = el("span", "card-usage", formatTokens(tokens) + " tok · $" + cost.toFixed(2));
      usage.title = summary.input_tokens + " input + " + summary.output_tokens + " output tokens";
      foot.appendChild(usage);
    }
    var updated = el("time", "card-updated", Live.relativeTime(summary.updated_at));
    if (summary.updated_at) updated.setAttribute("datetime", summary.updated_at);
    foot.appendChild(updated);
    card.appendChild(foot);

    card.dataset.search = [summary.title, summary.project, summary.current_role, summary.state]
      .join(" ")
      .toLowerCase();
    return card;
  }

  function byRecent(a, b) {
    return (summaries.get(b.dataset.workflowId).updated_at || "").localeCompare(
      summaries.get(a.dataset.workflowId).updated_at || ""
    );
  }

  function place(card, summary) {
    var list = columnEl(columnOf(summary)).querySelector(".cards");
    var siblings = Array.prototype.slice.call(list.children).filter(function (node) {
      return node !== card;
    });
    var before = null;
    for (var i = 0; i < siblings.length; i++) {
      if (byRecent(card, siblings[i]) < 0) {
        before = siblings[i];
        break;
      }
    }
    list.insertBefore(card, before);
  }

  function upsert(summary, animate) {
    var shown = summaries.get(summary.id);
    if (shown && (shown.last_seq || 0) > (summary.last_seq || 0)) return;
    // One commit sends a frame per event, each with the same after-commit summary.
    if (shown && shown.last_seq === summary.last_seq && shown.updated_at === summary.updated_at) return;
    var moved = !shown || columnOf(shown) !== columnOf(summary);
    summaries.set(summary.id, summary);
    var old = cards.get(summary.id);
    var card = buildCard(summary);
    cards.set(summary.id, card);
    if (old) old.remove();
    place(card, summary);
    applyFilter(card);
    if (animate) card.classList.add(moved ? "is-moved" : "is-updated");
  }

  function replaceAll(list) {
    summaries.clear();
    cards.forEach(function (card) {
      card.remove();
    });
    cards.clear();
    list.forEach(function (summary) {
      upsert(summary, false);
    });
    updateCounts();
  }

  function applyFilter(card) {
    var query = (filterInput && filterInput.value.trim().toLowerCase()) || "";
    card.hidden = Boolean(query) && card.dataset.search.indexOf(query) === -1;
  }

  function updateCounts() {
    var columns = board.querySelectorAll("[data-column]");
    var visible = 0;
    for (var i = 0; i < columns.length; i++) {
      var shown = columns[i].querySelectorAll(".card:not([hidden])").length;
      visible += shown;
      columns[i].querySelector("[data-count]").textContent = String(shown);
      columns[i].classList.toggle("is-empty", shown === 0);
    }
    if (totalEl) {
      totalEl.textContent =
        visible === summaries.size ? "(" + summaries.size + ")" : "(" + visible + " of " + summaries.size + ")";
    }
  }

  if (filterInput) {
    filterInput.addEventListener("input", function () {
      cards.forEach(applyFilter);
      updateCounts();
    });
  }

  window.setInterval(function () {
    var times = board.querySelectorAll("time.card-updated[datetime]");
    for (var i = 0; i < times.length; i++) {
      times[i].textContent = Live.relativeTime(times[i].getAttribute("datetime"));
    }
  }, 30000);

  var embedded = document.getElementById("board-snapshot");
  if (embedded) replaceAll(JSON.parse(embedded.textContent));

  Live.connect({
    path: board.dataset.wsPath,
    onFrame: function (frame) {
      if (frame.type === "snapshot") {
        replaceAll(frame.workflows || []);
      } else if (frame.type === "workflow.changed" && frame.workflow) {
        upsert(frame.workflow, true);
        updateCounts();
      }
    },
    onClose: function (event) {
      if (event.code === Live.CLOSE.UNAUTHORISED) {
        window.location.reload(); // the session ended: the page sends us to sign in
        return "stop";
      }
      return null;
    },
  });
})();
