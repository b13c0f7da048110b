// The new-dataset form: fill the slug from the name as it is typed, until the slug is edited
// by hand (or was filled when the page came back with errors). The server checks the slug.
(function () {
  var name = document.querySelector("[data-slug-source]");
  if (!name) return;
  var slug = document.getElementById(name.dataset.slugSource);
  if (!slug) return;
  var touched = slug.value !== "";
  function slugify(text) {
    return text.normalize("NFKD").replace(/[\u0300-\u036f]/g, "").toLowerCase()
      .replace(/[^a-z0-9]+/g, "-").replace(/^-+|-+$/g, "").slice(0, 80);
  }
  slug.addEventListener("input", function () { touched = slug.value !== ""; });
  name.addEventListener("input", function () { if (!touched) slug.value = slugify(name.value); });
})();
