// The registry's keyboard: in the approvals inbox j/k move between requests and Enter or o
// opens one; on a request's page a and r go to the approve and reject forms, Ctrl+Enter sends
// the form being typed in, j/k go to the next or previous open request and i to the inbox.
// Keys typed into a field stay in the field (except Ctrl+Enter), and modified keys are the browser's.
(function () {
  function typing(event) {
    var el = event.target;
    return el && (el.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(el.tagName));
  }

  function go(url) { if (url) window.location.href = url; }

  function onKey(handlers) {
    document.addEventListener("keydown", function (event) {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey) && typing(event)) {
        var form = event.target.form;
        if (form && !form.querySelector("fieldset[disabled]")) { event.preventDefault(); form.requestSubmit(); }
        return;
      }
      if (typing(event) || event.ctrlKey || event.metaKey || event.altKey) return;
      var handler = handlers[event.key];
      // A handler that returns false leaves the key to the browser (Enter on a focused link).
      if (handler && handler() !== false) event.preventDefault();
    });
  }

  // --- the inbox
  var inbox = document.getElementById("inbox");
  if (inbox) {
    var items = Array.prototype.slice.call(inbox.querySelectorAll(".inbox-item"));
    var current = -1;
    function select(index) {
      if (!items.length) return;
      current = Math.max(0, Math.min(items.length - 1, index));
      items.forEach(function (item, i) { item.setAttribute("aria-current", i === current ? "true" : "false"); });
      items[current].focus();
      items[current].scrollIntoView({block: "nearest"});
    }
    function open() {
      if (current < 0 || document.activeElement !== items[current]) return false;
      go(items[current].dataset.url);
    }
    onKey({
      j: function () { select(current + 1); }, k: function () { select(current - 1); },
      ArrowDown: function () { select(current + 1); }, ArrowUp: function () { select(current - 1); },
      Enter: open, o: open,
      n: function () { go(inbox.dataset.nextPage); }, p: function () { go(inbox.dataset.previousPage); },
    });
    items.forEach(function (item, i) { item.addEventListener("focus", function () { current = i; }); });
    return;
  }

  // --- a request's page
  var nav = document.getElementById("request-nav");
  if (!nav) return;
  function focusField(formId) {
    var form = document.getElementById(formId);
    var field = form && form.querySelector("fieldset:not([disabled]) textarea, form > .field textarea");
    if (!form) return;
    form.scrollIntoView({block: "center"});
    if (field) field.focus();
  }
  onKey({
    a: function () { focusField("approve-form"); }, r: function () { focusField("reject-form"); },
    j: function () { go(nav.dataset.next); }, k: function () { go(nav.dataset.previous); },
    i: function () { go(nav.dataset.inbox); },
  });
})();
