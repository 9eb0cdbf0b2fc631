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
      if (stop) {
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
  document.addEventListener("htmx:wsBeforeMessage", function () { stickToBottom = nearBottom(); });
  document.addEventListener("htmx:wsAfterMessage", function () {
    addCopyButtons(document.getElementById("messages"));
    announceFinished();
    if (stickToBottom) scrollToBottom();
    updateJump();
  });
  document.addEventListener("htmx:wsAfterSend", function (event) {
    var form = event.target;
    if (form instanceof HTMLFormElement && form.id === "composer") form.reset();
    if (form instanceof HTMLFormElement && form.classList.contains("edit-form")) form.hidden = true;
    stickToBottom = true;
  });
  document.addEventListener("htmx:wsOpen", function () { document.body.classList.add("ws-open"); });
  document.addEventListener("htmx:wsClose", function () { document.body.classList.remove("ws-open"); });

  document.addEventListener("DOMContentLoaded", function () {
    addCopyButtons(document);
    announceFinished();
    if (document.getElementById("messages")) scrollToBottom();
    updateJump();
    var text = document.getElementById("composer-text");
    if (text) text.focus();
  });
})();
