// The portal's one script of its own (the Content-Security-Policy allows no inline script):
// a form, or the button that submits it, with data-confirm asks before it is sent.
document.addEventListener("submit", function (event) {
  var asker = (event.submitter && event.submitter.closest("[data-confirm]")) ||
    event.target.closest("[data-confirm]");
  if (asker && !window.confirm(asker.getAttribute("data-confirm"))) {
    event.preventDefault();
    event.stopImmediatePropagation();
  }
}, true);
