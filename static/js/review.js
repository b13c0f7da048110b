// The review page: one example at a time, keyboard first. Every action is one POST that
// answers with the next example, so the page never reloads. Texts go in with textContent:
// whatever HTML an example holds is shown as text, never run.
(function () {
  var root = document.getElementById("review");
  if (!root) return;
  var csrf = root.querySelector("input[name=csrfmiddlewaretoken]").value;
  var text = document.getElementById("text");
  var statusLine = document.getElementById("status");
  var flagForm = document.getElementById("flag-form");
  var flagNote = document.getElementById("flag-note");
  var help = document.getElementById("help");
  var keys = {};
  root.querySelectorAll(".label-key").forEach(function (button) {
    keys[button.dataset.key] = button.dataset.label;
    button.addEventListener("click", function () { answer(button.dataset.label); });
  });
  var current = null;
  var busy = false;

  function say(message, isError) {
    statusLine.textContent = message;
    statusLine.classList.toggle("error", !!isError);
  }

  function show(data) {
    current = data.item;
    document.getElementById("done").textContent = data.done;
    text.textContent = data.item ? data.text : data.message;
    root.dataset.item = data.item || "";
    var suggestion = document.getElementById("suggestion");
    suggestion.hidden = !data.suggestion;
    if (data.suggestion) {
      document.getElementById("suggestion-label").textContent = data.suggestion.label;
      var confidence = data.suggestion.confidence;
      document.getElementById("suggestion-confidence").textContent =
        confidence === null ? "" : Math.round(confidence * 100) + "% confident";
    }
  }

  function request(url, body) {
    if (busy) return Promise.resolve();
    busy = true;
    var started = performance.now();
    var options = body === undefined ? {headers: {"Accept": "application/json"}} : {
      method: "POST", body: new URLSearchParams(body),
      headers: {"X-CSRFToken": csrf, "Accept": "application/json"}, credentials: "same-origin"};
    var refresh = false;
    return fetch(url, options).then(function (response) {
      return response.json().then(function (data) {
        if (!response.ok) {
          // 409: the example changed under us (adjudicated, already answered): show why, move on.
          refresh = response.status === 409 && body !== undefined;
          throw new Error(data.error || ("The server answered " + response.status));
        }
        show(data);
        return Math.round(performance.now() - started);
      });
    }).catch(function (error) {
      say(error.message, true);
      return null;
    }).finally(function () {
      busy = false;
      if (refresh) fetch(root.dataset.next, {headers: {"Accept": "application/json"}})
        .then(function (r) { return r.json(); }).then(show);
    });
  }

  function answer(label) {
    if (!current) return;
    request(root.dataset.answer, {item: current, label: label}).then(function (ms) {
      if (ms !== null && ms !== undefined) say("Saved “" + label + "” (" + ms + " ms)");
    });
  }

  function skip() {
    if (!current) return;
    request(root.dataset.skip, {item: current}).then(function (ms) { if (ms != null) say("Skipped"); });
  }

  function undo() {
    request(root.dataset.undo, {}).then(function (ms) { if (ms != null) say("Undone: answer it again"); });
  }

  function openFlag() {
    if (!current) return;
    flagForm.hidden = false;
    flagNote.value = "";
    flagNote.focus();
  }

  function closeFlag() {
    flagForm.hidden = true;
    flagNote.blur();
  }

  flagForm.addEventListener("submit", function (event) {
    event.preventDefault();
    var note = flagNote.value;
    closeFlag();
    request(root.dataset.answer, {item: current, flag: "on", note: note}).then(function (ms) {
      if (ms != null) say("Flagged for a reviewer");
    });
  });
  flagNote.addEventListener("keydown", function (event) {
    if (event.key === "Escape") { event.preventDefault(); closeFlag(); }
  });
  document.getElementById("skip-button").addEventListener("click", skip);
  document.getElementById("flag-button").addEventListener("click", openFlag);
  document.getElementById("undo-button").addEventListener("click", undo);
  document.getElementById("help-button").addEventListener("click", function () { help.hidden = !help.hidden; });

  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    var target = event.target;
    if (target && (target.tagName === "INPUT" || target.tagName === "TEXTAREA" || target.tagName === "SELECT")) return;
    var key = event.key;
    if (key === "?") { help.hidden = !help.hidden; }
    else if (key === "s") { skip(); }
    else if (key === "f") { openFlag(); }
    else if (key === "u") { undo(); }
    else if (keys[key.toLowerCase()] !== undefined) { answer(keys[key.toLowerCase()]); }
    else { return; }
    event.preventDefault();
  });

  request(root.dataset.next);
})();
