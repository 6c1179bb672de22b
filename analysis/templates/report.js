// Page the packet table: without this script every row is simply shown.
(function () {
  var body = document.getElementById("packets");
  if (!body) { return; }
  var rows = body.rows, size = 200, pages = Math.max(1, Math.ceil(rows.length / size)), page = 0;
  var label = document.getElementById("page-label");
  function show(p) {
    page = Math.min(Math.max(p, 0), pages - 1);
    for (var i = 0; i < rows.length; i++) {
      rows[i].style.display = (Math.floor(i / size) === page) ? "" : "none";
    }
    if (label) { label.textContent = "page " + (page + 1) + " of " + pages; }
  }
  function follow() {
    var id = decodeURIComponent(location.hash.slice(1));
    var row = id ? document.getElementById(id) : null;
    if (row && row.parentNode === body) {
      show(Math.floor(row.sectionRowIndex / size));
      var box = row.closest("details");
      if (box) { box.open = true; }
      row.scrollIntoView();
    }
  }
  document.getElementById("page-prev").onclick = function () { show(page - 1); };
  document.getElementById("page-next").onclick = function () { show(page + 1); };
  document.getElementById("pager").hidden = pages < 2;
  window.addEventListener("hashchange", follow);
  show(0);
  follow();
})();
