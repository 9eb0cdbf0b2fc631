// chatsite's own page code (no inline script: the CSP forbids it). htmx and its ws extension do
// the talking; this file adds the keyboard, the copy buttons, the edit forms and the scrolling.
(function () {
  "use strict";

  function nearBottom() {
    return window.innerHeight + window.scrollY >= document.body.scrollHeight - 120;
  }

  function scrollToBottom() {
    window.scrollTo(0, document.body.scrollHeight);
  }

  // A copy button on every code block of the rendered messages (added again after each swap).
  function addCopyButtons(root) {
    (root || document).querySelectorAll(".msg-body pre").forEach(function (pre) {
      if (pre.querySelector(":scope > .copy-code")) return;
      var button = document.createElement("button");
      button.type = "button";
      button.className = "copy-code";
      button.textContent = "Copy";
      button.setAttribute("aria-label", "Copy the code");
      pre.appendChild(button);
    });
  }

  function copyText(text, button) {
    var done = function () {
      button.textContent = "Copied";
      setTimeout(function () { button.textContent = "Copy"; }, 1500);
    };
    if (navigator.clipboard && navigator.clipboard.writeText) {
      navigator.clipboard.writeText(text).then(done, function () { button.textContent = "Copy failed"; });
    } else {
      var area = document.createElement("textarea");
      area.value = text;
      document.body.appendChild(area);
      area.select();
      try { document.execCommand("copy"); done(); } finally { area.remove(); }
    }
  }

  document.addEventListener("click", function (event) {
    var target = event.target;
    if (!(target instanceof Element)) return;
    var copy = target.closest(".copy-code");
    if (copy) {
      var code = copy.parentElement.querySelector("code");
      copyText(code ? code.textContent : "", copy);
      return;
    }
    var copyAnswer = target.closest(".copy-answer");
    if (copyAnswer) {
      copyText(copyAnswer.getAttribute("data-markdown") || "", copyAnswer);
      return;
    }
    if (target.closest("#jump-latest")) {
      scrollToBottom();
      stickToBottom = true;
      return;
    }
    var sidebarToggle = target.closest("#sidebar-toggle");
    if (sidebarToggle) {
      var open = document.body.classList.toggle("sidebar-open");
      sidebarToggle.setAttribute("aria-expanded", String(open));
      return;
    }
    var theme = target.closest("#theme-toggle");
    if (theme) {
      // Post the opposite of what is shown (auto follows prefers-color-scheme).
      var shown = document.documentElement.getAttribute("data-theme");
      if (shown !== "light" && shown !== "dark") {
        shown = window.matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light";
      }
      theme.form.elements.theme.value = shown === "dark" ? "light" : "dark";
      return;
    }
    var toggle = target.closest(".edit-toggle");
    if (toggle) {
      var form = document.getElementById(toggle.getAttribute("aria-controls"));
      if (form) {
        form.hidden = !form.hidden;
        toggle.setAttribute("aria-expanded", String(!form.hidden));
        if (!form.hidden) form.querySelector("textarea").focus();
      }
      return;
    }
    var cancel = target.closest(".edit-cancel");
    if (cancel) cancel.closest(".edit-form").hidden = true;
  });

  // Enter sends, Shift+Enter makes a new line (in the composer and the edit forms); Escape stops.
  document.addEventListener("keydown", function (event) {
    var target = event.target;
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing &&
        target instanceof HTMLTextAreaElement && target.form &&
        (target.form.id === "composer" || target.form.classList.contains("edit-form"))) {
      event.preventDefault();
      if (target.value.trim()) target.form.requestSubmit();
    } else if (event.key === "Escape") {
      var stop = document.getElementById("stop-form");
      if (stop && replyRunning()) {  // nothing to stop: Esc does nothing
        event.preventDefault();
        stop.requestSubmit();
      }
    }
  });

  // A team picked in the sidebar applies at once (the Switch button is there without script).
  document.addEventListener("change", function (event) {
    var target = event.target;
    if (target instanceof HTMLSelectElement && target.hasAttribute("data-autosubmit")) {
      target.form.requestSubmit();
    }
  });

  // --- The live connections ----------------------------------------------------------------------
  // Two sockets: the conversation's (#chat) and the conversation list's (#sidebar). Events of the
  // ws extension are told apart by the element that holds the socket.
  function isChat(event) { return event.target instanceof Element && event.target.id === "chat"; }
  function isList(event) { return event.target instanceof Element && event.target.id === "sidebar"; }

  function replyRunning() { return !!document.querySelector("#messages .msg.status-streaming"); }

  // Stop is enabled only while an answer is being written (there is nothing to stop otherwise).
  function updateStop() {
    var stop = document.getElementById("stop-button");
    if (stop) stop.disabled = !replyRunning();
  }

  // The tab's title follows the conversation's (renamed here, in another tab or by its owner).
  function updateTitle() {
    var title = document.getElementById("conv-title");
    if (title && title.dataset.title) document.title = title.dataset.title + " · chatsite";
  }

  // --- A message typed while an answer is written is queued, never lost ---------------------------
  // It stays in the box, marked "queued", and is sent when the answer ends; "Don't send" keeps it
  // in the box unsent. (Sent anyway, e.g. by a teammate's reply starting meanwhile, the server
  // refuses it and puts it back in the box with the reason.)
  var queued = false;
  function setQueued(on) {
    queued = on;
    var note = document.getElementById("composer-queued");
    if (note) note.hidden = !on;
    var form = document.getElementById("composer");
    if (form) form.classList.toggle("queued", on);
  }
  function sendQueued() {
    if (!queued || replyRunning()) return;
    setQueued(false);
    var text = document.getElementById("composer-text");
    if (text && text.value.trim()) document.getElementById("composer").requestSubmit();
  }
  // Capturing, so that the ws extension (listening on the form) never sees a held submit.
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (form instanceof HTMLFormElement && form.id === "composer" && replyRunning()) {
      event.preventDefault();
      event.stopPropagation();
      setQueued(true);
    }
  }, true);
  document.addEventListener("click", function (event) {
    if (event.target instanceof Element && event.target.closest("#unqueue")) {
      setQueued(false);
      var text = document.getElementById("composer-text");
      if (text) text.focus();
    }
  });

  // "Jump to latest" shows while the reader is scrolled up from the end of the conversation.
  function updateJump() {
    var jump = document.getElementById("jump-latest");
    if (jump) jump.hidden = nearBottom();
  }
  window.addEventListener("scroll", updateJump, { passive: true });
  window.addEventListener("resize", updateJump);

  // The live region (#chat-announce) says once that an answer is finished, not every token: the
  // answers seen streaming in this page are remembered, and announced when they end.
  var streaming = {};
  var announced = {};
  function announceFinished() {
    var region = document.getElementById("chat-announce");
    if (!region) return;
    document.querySelectorAll("#messages .msg-assistant").forEach(function (answer) {
      if (answer.classList.contains("status-streaming")) {
        streaming[answer.id] = true;
      } else if (streaming[answer.id] && !announced[answer.id]) {
        announced[answer.id] = true;
        var status = answer.className.match(/status-(\w+)/);
        var ended = status && status[1] !== "complete" ? " (" + status[1] + ")" : "";
        var body = answer.querySelector(".msg-body");
        var text = body ? body.textContent.trim() : "";
        region.textContent = "Answer finished" + ended + ": " + text.slice(0, 300);
      }
    });
  }

  var stickToBottom = true;
  document.addEventListener("htmx:wsBeforeMessage", function (event) {
    if (isChat(event)) stickToBottom = nearBottom();
  });
  document.addEventListener("htmx:wsAfterMessage", function (event) {
    if (isList(event)) {
      refreshList();
      return;
    }
    if (!isChat(event)) return;
    var st = stateOf(event);
    if (st.syncing) {
      st.syncing = false;
      showState("connected");
    }
    addCopyButtons(document.getElementById("messages"));
    announceFinished();
    if (stickToBottom) scrollToBottom();
    updateStop();
    updateTitle();
    sendQueued();
    updateJump();
  });
  document.addEventListener("htmx:wsAfterSend", function (event) {
    var form = event.target;
    if (form instanceof HTMLFormElement && form.id === "composer") form.reset();
    if (form instanceof HTMLFormElement && form.classList.contains("edit-form")) form.hidden = true;
    stickToBottom = true;
  });

  // The conversation list is fetched again when the server says it changed (a conversation made,
  // renamed, shared or deleted, here, in another tab or by a teammate), keeping the search typed.
  // One fetch at a time: a change announced while one is on its way is fetched once it has been
  // shown. (htmx would queue a second request with the target it was given when asked, the list
  // that the first answer replaces, and swap its answer into that detached element.)
  var listFetch = { running: false, again: false };
  function refreshList() {
    var sidebar = document.getElementById("sidebar");
    if (!sidebar || !window.htmx) return;
    if (listFetch.running) {
      listFetch.again = true;
      return;
    }
    var form = sidebar.querySelector("form.search");  // the search typed and the source filter
    var params = new URLSearchParams(form ? new FormData(form) : undefined);
    var chat = document.getElementById("chat");
    if (chat) params.set("current", chat.dataset.conversation);
    listFetch.running = true;
    listFetch.again = false;
    function done() {
      listFetch.running = false;
      if (listFetch.again) refreshList();
    }
    htmx.ajax("GET", sidebar.dataset.listUrl + "?" + params.toString(),
              { source: sidebar, target: "#conversation-list", swap: "outerHTML" }).then(done, done);
  }

  // --- Connection state and reconnection ----------------------------------------------------------
  // The page reconnects itself (htmx-ext-ws's own retry waits up to a minute, and knows nothing of
  // the network): at once when the browser comes back online, else with a capped exponential
  // backoff with jitter; while the browser is offline it does not try.
  var RETRY_CODES = [1006, 1011, 1012, 1013, 4503];
  var NEVER = 2147483647;  // setTimeout's longest delay: the extension's own retry does not fire
  var sockets = {};  // element id → {wrapper, socket, retries, timer, opened, closedOffline}
  var lastSocket = null;
  if (window.htmx) {
    htmx.config.wsReconnectDelay = function () { return NEVER; };
    var createWebSocket = htmx.createWebSocket;
    htmx.createWebSocket = function (url) {
      lastSocket = createWebSocket(url);
      return lastSocket;
    };
  }
  function stateOf(event) {
    var id = event.target.id;
    if (!sockets[id]) sockets[id] = { retries: 0, timer: null, opened: false };
    return sockets[id];
  }
  function showState(state) {
    document.body.classList.toggle("ws-open", state === "connected");
    var line = document.getElementById("connection-state");
    if (!line) return;  // a read-only conversation has no composer
    var texts = {
      connecting: "Connecting…",
      connected: "Connected",
      reconnecting: "Connection lost: reconnecting…",
      offline: "Offline: it reconnects when the network is back",
      closed: "Not connected: reload the page",
    };
    line.dataset.state = state;
    line.textContent = texts[state];
    if (state !== "connected" && state !== "connecting") {
      // An answer being written goes on on the server; this page no longer sees it.
      document.querySelectorAll("#messages .msg-status").forEach(function (status) {
        status.textContent = "not connected";
      });
    }
  }
  // A new socket unless one is open or opening. A socket still closing (its close not yet answered:
  // a busy server, a network just back) is not waited for: its late close is ignored (wsClose).
  function reconnect(st) {
    clearTimeout(st.timer);
    st.timer = null;
    var state = st.socket ? st.socket.readyState : WebSocket.CLOSED;
    if (st.wrapper && (state === WebSocket.CLOSED || state === WebSocket.CLOSING)) st.wrapper.reconnect();
  }
  document.addEventListener("htmx:wsConnecting", function (event) {
    var st = stateOf(event);
    st.socket = lastSocket;
    if (isChat(event)) showState(st.opened ? "reconnecting" : "connecting");
  });
  document.addEventListener("htmx:wsOpen", function (event) {
    var st = stateOf(event);
    var again = st.opened;
    st.wrapper = event.detail.socketWrapper;
    st.retries = 0;
    st.opened = true;
    st.closedOffline = false;
    // The server's first frame is the conversation again (whatever changed meanwhile): the page
    // says it is connected once that is shown (htmx:wsAfterMessage below).
    if (isChat(event)) st.syncing = true;
    if (isList(event)) {
      document.body.dataset.listSocket = "open";
      if (again) refreshList();  // what changed while it was away
    }
  });
  document.addEventListener("htmx:wsClose", function (event) {
    var st = stateOf(event);
    var closed = event.detail.event && event.detail.event.target;
    if (closed && st.socket && closed !== st.socket) return;  // an old socket, already replaced
    st.wrapper = event.detail.socketWrapper || st.wrapper;
    var code = event.detail.event ? event.detail.event.code : 1006;
    if (isList(event)) document.body.dataset.listSocket = "closed";
    if (!document.body.contains(event.target)) return;
    if (navigator.onLine === false || st.closedOffline) {
      if (isChat(event)) showState("offline");  // the online event reconnects
      return;
    }
    if (RETRY_CODES.indexOf(code) < 0) {
      if (isChat(event)) showState("closed");
      return;
    }
    if (isChat(event)) showState("reconnecting");
    var delay = Math.min(500 * Math.pow(2, st.retries), 15000);
    st.retries += 1;
    clearTimeout(st.timer);
    st.timer = setTimeout(function () { reconnect(st); }, delay * (0.5 + Math.random() / 2));
  });
  window.addEventListener("offline", function () {
    Object.keys(sockets).forEach(function (id) {
      var st = sockets[id];
      clearTimeout(st.timer);
      st.timer = null;
      st.closedOffline = true;
      // No network, no connection: close it now rather than let it look alive.
      if (st.socket && st.socket.readyState !== WebSocket.CLOSED) st.socket.close();
    });
    if (document.getElementById("chat")) showState("offline");
  });
  window.addEventListener("online", function () {
    Object.keys(sockets).forEach(function (id) {
      var st = sockets[id];
      st.retries = 0;
      st.closedOffline = false;
      reconnect(st);
    });
  });

  // Browsing versions (‹ 1 / 2 ›): the page is sent again with the chosen version; the focus goes
  // back to the same arrow on it (or the other one at either end), and the page stays there.
  var pendingVersion = null;
  document.addEventListener("htmx:wsAfterSend", function (event) {
    var form = event.target;
    if (!(form instanceof HTMLFormElement) || !form.elements.action || form.elements.action.value !== "version") return;
    var button = form.querySelector("button");
    pendingVersion = {
      id: form.elements.message_id.value,
      next: !!(button && button.classList.contains("version-next")),
    };
    stickToBottom = false;
  });
  document.addEventListener("htmx:wsAfterMessage", function () {
    if (!pendingVersion) return;
    var chosen = document.getElementById("m-" + pendingVersion.id);
    if (!chosen) return;
    var buttons = chosen.querySelectorAll(".versions button");
    var want = pendingVersion.next ? buttons[1] : buttons[0];
    if (want && want.disabled) want = pendingVersion.next ? buttons[0] : buttons[1];
    pendingVersion = null;
    if (want) {
      want.focus({ preventScroll: true });
      chosen.scrollIntoView({ block: "nearest" });
    }
  });


  document.addEventListener("DOMContentLoaded", function () {
    addCopyButtons(document);
    updateStop();
    announceFinished();
    if (document.getElementById("messages")) scrollToBottom();
    updateJump();
    var text = document.getElementById("composer-text");
    if (text) text.focus();
  });
})();
