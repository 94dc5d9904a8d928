// django-unfold's page behaviour under the portal's Content-Security-Policy. The portal runs
// Alpine's CSP build (no eval), whose expressions can read only component data: no globals, no
// statements. So unfold's own components (globals in its app.js) are registered as Alpine data,
// and the page state that unfold keeps in inline expressions (the sidebar, the active tab) lives
// in one component, opsflowLayout, on <body>. Loaded before Alpine, which fires alpine:init.
document.addEventListener("alpine:init", function () {
  ["theme", "searchForm", "searchDropdown", "searchCommand"].forEach(function (name) {
    if (typeof window[name] === "function") window.Alpine.data(name, window[name]);
  });

  var SIDEBAR_KEY = "sidebarDesktopOpen";  // unfold's own key: the choice carries over

  window.Alpine.data("opsflowLayout", function () {
    var stored = window.localStorage.getItem(SIDEBAR_KEY);
    return {
      activeTab: "",
      sidebarMobileOpen: false,
      sidebarDesktopOpen: stored === null ? true : stored === "1",
      // unfold's change form binds its action from window.location; this is the part it reads.
      window: {
        location: {
          get pathname() { return window.location.pathname; },
          get search() { return window.location.search; },
        },
      },
      init: function () {
        var fromHash = typeof window.getCurrentTab === "function" ? window.getCurrentTab() : null;
        this.activeTab = fromHash || this.$el.dataset.activeTab || "";
        this.$watch("sidebarDesktopOpen", function (open) {
          window.localStorage.setItem(SIDEBAR_KEY, open ? "1" : "0");
        });
      },
      toggleSidebarDesktop: function () { this.sidebarDesktopOpen = !this.sidebarDesktopOpen; },
      toggleSidebarMobile: function () { this.sidebarMobileOpen = !this.sidebarMobileOpen; },
    };
  });
});
