// The API keys page: Copy buttons for a new key and its sample call (no inline script: the CSP).
(function () {
  "use strict";
  document.addEventListener("click", function (event) {
    var button = event.target instanceof Element && event.target.closest(".copy-text");
    if (!button) return;
    var source = document.getElementById(button.dataset.copy);
    if (!source) return;
    var label = button.textContent;
    var done = function (text) {
      button.textContent = text;
      setTimeout(function () { button.textContent = label; }, 1500);
    };
    if (navigator.clipboard && navigator.clipboard.writeText) {
      navigator.clipboard.writeText(source.textContent).then(
        function () { done("Copied"); },
        function () { done("Copy failed: select the text"); }
      );
    } else {
      var range = document.createRange();
      range.selectNodeContents(source);
      var selection = window.getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
      done(document.execCommand("copy") ? "Copied" : "Copy failed: select the text");
    }
  });
})();
