// Step through the RUDP sessions: a cursor over the states the report computed.
(function () {
  var box = document.getElementById("stepper");
  var source = document.getElementById("step-data");
  if (!box || !source) { return; }
  var sessions = JSON.parse(source.textContent).sessions, steps = [], at = 0, shown = 7;
  var rows = document.getElementById("step-rows");
  var picker = document.getElementById("step-session");
  function put(id, text) { document.getElementById(id).textContent = text; }
  function row(i) {
    var s = steps[i], tr = document.createElement("tr");
    var cells = [String(s.frame), s.down ? "" : s.packet, s.down ? "\u2190" : "\u2192", s.down ? s.packet : ""];
    cells.forEach(function (text, k) {
      var td = document.createElement("td");
      td.textContent = text;
      if (k === 2) { td.className = "arrow"; }
      tr.appendChild(td);
    });
    tr.className = (i === at ? "current" : "") + (s.notes.length ? " noted" : "");
    tr.setAttribute("data-step", String(i));
    tr.onclick = function () { show(i); };
    return tr;
  }
  function show(i) {
    rows.textContent = "";
    if (!steps.length) { put("step-label", "no DATA or ACK traced"); return; }
    at = Math.min(Math.max(i, 0), steps.length - 1);
    var s = steps[at];
    put("step-label", "step " + (at + 1) + " of " + steps.length);
    put("step-frame", String(s.frame));
    put("step-time", s.time.toFixed(6) + " s");
    put("step-packet", s.packet + (s.down ? " (server \u2192 client)" : " (client \u2192 server)"));
    put("step-base", "chunk " + s.base);
    put("step-next-chunk", "chunk " + s.next + " (" + Math.max(0, s.next - s.base) + " in flight)");
    put("step-window", s.lo === s.hi ? String(s.hi) : s.lo + ".." + s.hi);
    put("step-expected", "chunk " + s.expected);
    put("step-notes", s.notes.length ? s.notes.join("; ") : "nothing noted");
    var from = Math.max(0, at - shown), to = Math.min(steps.length, at + shown + 1);
    for (var k = from; k < to; k++) { rows.appendChild(row(k)); }
  }
  function pick(n) {
    var session = sessions[n];
    steps = session.steps;
    put("step-client", "client " + session.client);
    put("step-server", "server " + session.server);
    show(0);
  }
  document.getElementById("step-first").onclick = function () { show(0); };
  document.getElementById("step-prev").onclick = function () { show(at - 1); };
  document.getElementById("step-next").onclick = function () { show(at + 1); };
  document.getElementById("step-last").onclick = function () { show(steps.length - 1); };
  picker.onchange = function () { pick(Number(picker.value)); picker.blur(); };
  document.addEventListener("keydown", function (event) {
    var tag = (event.target && event.target.tagName) || "";
    if (tag === "INPUT" || tag === "TEXTAREA" || tag === "SELECT") { return; }
    var moves = { ArrowRight: at + 1, ArrowLeft: at - 1, Home: 0, End: steps.length - 1 };
    if (Object.prototype.hasOwnProperty.call(moves, event.key)) {
      event.preventDefault();
      show(moves[event.key]);
    }
  });
  pick(0);
})();
