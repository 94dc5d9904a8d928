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

// A list that refreshes itself (the executions while some are running): not while the user is
// choosing rows or typing, nor in a hidden tab; and the new rows get the admin's action
// checkboxes behaviour (actions.js binds them once, at load).
document.addEventListener("htmx:beforeRequest", function (event) {
  var list = event.detail.elt;
  if (!list || list.id !== "opsflow-results") return;
  var form = list.closest("form");
  var busy = document.hidden ||
    (form && form.querySelector("input.action-select:checked")) ||
    (form && form.contains(document.activeElement) && document.activeElement.tagName !== "BODY");
  if (busy) event.preventDefault();
});
document.addEventListener("htmx:afterSettle", function (event) {
  var list = document.getElementById("opsflow-results");
  if (!list || !list.contains(event.detail.elt) && event.detail.elt !== list) return;
  var boxes = list.querySelectorAll("tr input.action-select");
  var wrapper = list.closest(".result-list-wrapper");  // unfold's actions.js scopes to it
  if (boxes.length && wrapper && window.Actions) window.Actions(boxes, { parent: wrapper });
});

// A Copy button (data-copy="<id>") puts the text of that element on the clipboard.
document.addEventListener("click", function (event) {
  var button = event.target.closest("[data-copy]");
  if (!button) return;
  var source = document.getElementById(button.getAttribute("data-copy"));
  if (!source || !navigator.clipboard) return;
  // data-copy-origin: the element holds a path; copy it as a URL of this portal.
  var text = (button.hasAttribute("data-copy-origin") ? window.location.origin : "") +
    source.textContent;
  navigator.clipboard.writeText(text).then(function () {
    var label = button.textContent;
    button.textContent = "Copied";
    setTimeout(function () { button.textContent = label; }, 1500);
  });
});

// Times in the user's time zone: the server renders pages in the zone this cookie names.
(function () {
  try {
    var zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
    if (zone && document.cookie.indexOf("opsflow_tz=" + encodeURIComponent(zone)) === -1) {
      document.cookie = "opsflow_tz=" + encodeURIComponent(zone) + "; path=/; max-age=31536000; SameSite=Lax";
    }
  } catch (e) { /* an old browser: times stay in UTC */ }
})();

// The execution page re-renders its detail on every live event: step panels the user opened
// stay open.
var openPanels = [];
document.addEventListener("htmx:beforeSwap", function (event) {
  if (event.detail.target && event.detail.target.id === "execution-detail") {
    openPanels = Array.prototype.map.call(
      event.detail.target.querySelectorAll("details[id][open]"), function (d) { return d.id; });
  }
});
document.addEventListener("htmx:afterSwap", function () {
  openPanels.forEach(function (id) {
    var panel = document.getElementById(id);
    if (panel) panel.open = true;
  });
  openPanels = [];
});

// Keyboard: unfold opens some things from elements that take no focus (the filter sheet's
// link without href, the user menu, the sidebar's group titles). Each gets a tab stop and the
// role of a button, and Enter or Space clicks it.
function focusableClickTargets(root) {
  root.querySelectorAll("[x-on\\:click]").forEach(function (el) {
    var native = el.matches("a[href], button, input, select, textarea, summary");
    if (native || el.hasAttribute("tabindex")) return;
    el.setAttribute("tabindex", "0");
    if (!el.hasAttribute("role")) el.setAttribute("role", "button");
  });
}
document.addEventListener("DOMContentLoaded", function () { focusableClickTargets(document); });
document.addEventListener("htmx:afterSettle", function (event) {
  focusableClickTargets(event.detail.elt || document);
});
document.addEventListener("keydown", function (event) {
  if (event.key !== "Enter" && event.key !== " ") return;
  var el = event.target;
  if (!el || el.getAttribute("role") !== "button" || !el.hasAttribute("x-on:click")) return;
  if (el.matches("a[href], button, input, select, textarea, summary")) return;
  event.preventDefault();
  el.click();
});
