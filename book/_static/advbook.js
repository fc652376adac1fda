/* The book's small fixes to the theme, loaded on every page (html_js_files in _config.yml).

   Sidebar buttons: pydata-sphinx-theme 0.17 binds its sidebar dialogs ("open the table of
   contents" below 992 px) to the first .primary-toggle / .secondary-toggle of the page, and
   sphinx-book-theme 1.3 binds its "hide the sidebar" above 992 px to the first .primary-toggle
   too. That first button is the one in the top navbar, which sphinx-book-theme hides; the
   buttons a reader sees are in the article header and get no handler, so they do nothing
   (pydata/pydata-sphinx-theme#2451). A click on any other toggle is passed on to the first. */
(function () {
  "use strict";

  function forwardToFirst(selector) {
    const buttons = Array.from(document.querySelectorAll(selector));
    const bound = buttons[0];
    buttons.slice(1).forEach(function (button) {
      button.addEventListener("click", function (event) {
        event.preventDefault();
        event.stopPropagation();
        bound.click();
        button.blur();
      });
    });
  }

  function run() {
    forwardToFirst(".primary-toggle");
    forwardToFirst(".secondary-toggle");
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", run);
  } else {
    run();
  }
})();
