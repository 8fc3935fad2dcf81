/* TopDog live connection: a websocket that reconnects with backoff and shows its state.
 *
 * TopDogLive.connect({path, onFrame, onOpen, onClose}) opens ws(s)://<host><path>.
 * `path` may be a function, so a reconnect can carry fresh state (e.g. ?after=<seq>).
 * onClose(event) may return "stop" to give up (e.g. not found, signed out).
 * A connection that has been silent for too long is closed and opened again.
 */
(function () {
  "use strict";

  var PING_EVERY_MS = 25000;
  var SILENCE_LIMIT_MS = 70000;
  var MAX_DELAY_MS = 30000;

  function setStatus(state, text) {
    var el = document.getElementById("live-status");
    if (!el) return;
    el.dataset.state = state;
    el.textContent = text;
  }

  function connect(options) {
    var attempt = 0;
    var socket = null;
    var retryTimer = null;
    var pingTimer = null;
    var lastHeard = 0;
    var stopped = false;

    function url() {
      var path = typeof options.path === "function" ? options.path() : options.path;
      var scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
      return scheme + window.location.host + path;
    }

    function open() {
      retryTimer = null;
      setStatus("connecting", attempt ? "Reconnecting…" : "Connecting…");
      socket = new WebSocket(url());
      socket.onopen = function () {
        attempt = 0;
        lastHeard = Date.now();
        setStatus("live", "Live");
        startPings();
        if (options.onOpen) options.onOpen();
      };
      socket.onmessage = function (message) {
        lastHeard = Date.now();
        var frame;
        try {
          frame = JSON.parse(message.data);
        } catch (error) {
          return;
        }
        options.onFrame(frame, send);
      };
      socket.onclose = function (event) {
        stopPings();
        socket = null;
        if (stopped) return;
        var decision = options.onClose ? options.onClose(event) : null;
        if (decision === "stop") {
          stopped = true;
          setStatus("offline", "Offline");
          return;
        }
        schedule();
      };
    }

    function schedule() {
      if (retryTimer || stopped) return;
      var delay = Math.min(MAX_DELAY_MS, 1000 * Math.pow(2, attempt));
      delay = Math.round(delay * (0.5 + Math.random() / 2));
      attempt += 1;
      setStatus("reconnecting", "Reconnecting in " + Math.ceil(delay / 1000) + " s");
      retryTimer = window.setTimeout(open, delay);
    }

    function send(payload) {
      if (socket && socket.readyState === WebSocket.OPEN) {
        socket.send(JSON.stringify(payload));
      }
    }

    function startPings() {
      stopPings();
      pingTimer = window.setInterval(function () {
        if (Date.now() - lastHeard > SILENCE_LIMIT_MS && socket) {
          socket.close();
          return;
        }
        send({ type: "ping" });
      }, PING_EVERY_MS);
    }

    function stopPings() {
      if (pingTimer) window.clearInterval(pingTimer);
      pingTimer = null;
    }

    function reconnectNow() {
      if (stopped || socket) return;
      if (retryTimer) window.clearTimeout(retryTimer);
      attempt = 0;
      open();
    }

    // Back on the network or back to the tab: do not wait out the backoff.
    window.addEventListener("online", reconnectNow);
    document.addEventListener("visibilitychange", function () {
      if (document.visibilityState === "visible") reconnectNow();
    });

    open();
    return { send: send };
  }

  function relativeTime(iso) {
    if (!iso) return "";
    var seconds = Math.round((Date.now() - new Date(iso).getTime()) / 1000);
    if (seconds < 45) return "just now";
    var minutes = Math.round(seconds / 60);
    if (minutes < 60) return minutes + " min ago";
    var hours = Math.round(minutes / 60);
    if (hours < 24) return hours + " h ago";
    var days = Math.round(hours / 24);
    return days + " d ago";
  }

  function label(value) {
    if (!value) return "—";
    return value
      .toLowerCase()
      .split("_")
      .map(function (word) {
        return word.charAt(0).toUpperCase() + word.slice(1);
      })
      .join(" ");
  }

  // Server-rendered <time> elements show UTC; show them in the reader's time zone.
  function localiseTimes(root) {
    var times = (root || document).querySelectorAll("time[datetime]");
    for (var i = 0; i < times.length; i++) {
      if (times[i].dataset.local) continue;
      times[i].dataset.local = "1";
      var date = new Date(times[i].getAttribute("datetime"));
      if (isNaN(date.getTime())) continue;
      times[i].title = date.toISOString();
      times[i].textContent = date.toLocaleString([], {
        year: "numeric",
        month: "short",
        day: "numeric",
        hour: "2-digit",
        minute: "2-digit",
        second: times[i].textContent.split(":").length > 2 ? "2-digit" : undefined,
      });
    }
  }

  // Close codes of the websocket protocol (workflows/consumers.py).
  // TOO_MANY (too many open sockets or messages) reconnects with the usual backoff.
  var CLOSE = {
    UNAUTHORISED: 4401,
    NOT_FOUND: 4404,
    BAD_REQUEST: 4400,
    RESYNC: 4409,
    TOO_MANY: 4429,
  };

  window.TopDogLive = {
    connect: connect,
    relativeTime: relativeTime,
    label: label,
    localiseTimes: localiseTimes,
    setStatus: setStatus,
    CLOSE: CLOSE,
  };
})();
