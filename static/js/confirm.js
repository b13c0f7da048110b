// A button or form with data-confirm="question" asks before it submits: the one place that
// guards dangerous actions (cancel a run or a job, revoke a token). Listening on the document
// covers forms a page adds later (the run page swaps its content in place).
(function () {
  document.addEventListener("submit", function (event) {
    var button = event.submitter, form = event.target;
    var question = (button && button.dataset.confirm) || (form && form.dataset && form.dataset.confirm);
    if (question && !window.confirm(question)) event.preventDefault();
  }, true);
})();
