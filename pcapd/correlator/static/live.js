// Result events for one capture request, as they arrive (server-sent events).
// Every value is set with textContent: nothing from an event is parsed as HTML.
(function () {
  "use strict";
  var table = document.getElementById("events");
  var state = document.getElementById("state");
  var body = table.tBodies[0];
  var source = new EventSource(table.dataset.source);
  function cell(row, text) {
    var td = row.insertCell();
    td.textContent = text === undefined || text === null ? "" : String(text);
    return td;
  }
  source.onmessage = function (message) {
    var e = JSON.parse(message.data);
    var row = body.insertRow();
    row.className = "status-" + e.status;
    cell(row, e.node);
    cell(row, e.interface);
    cell(row, e.status + (e.error ? ": " + e.error : "")).className = "status";
    cell(row, e.stop);
    cell(row, e.packets);
    var file = cell(row, "");
    var links = e.links || {};
    if (links.local) {
      var code = document.createElement("code");
      code.className = "local";
      code.textContent = links.local;
      file.appendChild(code);
    }
    [["s3_url", "S3 (pre-signed)"], ["cloudshark", "CloudShark"]].forEach(function (pair) {
      if (links[pair[0]]) {
        var a = document.createElement("a");
        a.href = links[pair[0]];
        a.textContent = pair[1];
        file.appendChild(document.createTextNode(" "));
        file.appendChild(a);
      }
    });
    state.textContent = "Result events:";
  };
  source.addEventListener("end", function () {
    source.close();
    if (!body.rows.length) { state.textContent = "No result event arrived."; }
  });
  function stopped(why) {
    source.close();
    state.className = "error";
    state.textContent = why;
  }
  // Redis failed once the stream was under way: say why, and do not reconnect.
  source.addEventListener("failed", function (message) {
    stopped("The results stream stopped: " + JSON.parse(message.data).error);
  });
  // Refused before it began (Redis down, every live slot taken): EventSource
  // gives up on a non-200 answer without showing its reason, so ask for it.
  source.onerror = function () {
    if (source.readyState !== EventSource.CLOSED) { return; }  // reconnecting
    var asking = new AbortController();
    fetch(table.dataset.source, { signal: asking.signal }).then(function (answer) {
      if (answer.ok) {  // open again by now: this is a stream, not a reason
        asking.abort();
        stopped("The results stream was refused, and is open again: reload the page.");
        return;
      }
      return answer.json().then(function (body) {
        stopped("The results stream could not be opened: " + body.error);
      });
    }).catch(function () {
      stopped("The results stream could not be opened, and pcapd web does not answer.");
    });
  };
})();
