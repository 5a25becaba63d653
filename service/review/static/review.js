// Obliviate review UI: live anchor highlights, selection-to-anchor, keyboard shortcuts.
// Everything also works without this file (plain forms); this only makes reviewing faster.
(function () {
  "use strict";

  function typing(el) {
    return el && (el.tagName === "INPUT" || el.tagName === "TEXTAREA" || el.tagName === "SELECT" || el.isContentEditable);
  }

  // ---- help dialog
  var help = document.getElementById("help");
  function showHelp() { if (help && !help.open) { help.showModal(); } }
  document.querySelectorAll("[data-help]").forEach(function (b) { b.addEventListener("click", showHelp); });

  // ---- countdown of the claim's time limit
  document.querySelectorAll("[data-countdown]").forEach(function (el) {
    var left = parseInt(el.getAttribute("data-countdown"), 10);
    function tick() {
      left = Math.max(0, left - 1);
      var m = Math.floor(left / 60), s = left % 60;
      el.textContent = left > 0 ? m + ":" + (s < 10 ? "0" : "") + s : "time is up (the task may go to someone else)";
    }
    tick();
    setInterval(tick, 1000);
  });

  // ---- anchor review: the dictionary table drives the highlights
  var table = document.getElementById("anchors");
  var passages = Array.prototype.slice.call(document.querySelectorAll(".passage-card .passage"));
  var texts = passages.map(function (p) { return p.textContent; });

  function escapeRe(s) { return s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"); }

  function rows() {
    return Array.prototype.slice.call(table.querySelectorAll("tbody tr"));
  }

  function rowInfo(tr) {
    var term = tr.querySelector("input.term").value.trim();
    var keep = tr.querySelector("input[type=checkbox]").checked;
    var src = tr.querySelector(".src");
    return { tr: tr, term: term, keep: keep, source: src ? src.className.replace(/.*src-/, "") : "reviewer" };
  }

  function spans(text, infos) {
    var taken = [];
    infos.slice().sort(function (a, b) { return b.term.length - a.term.length; }).forEach(function (info) {
      if (!info.term) { return; }
      var re = new RegExp("(?<![\\p{L}\\p{N}_])" + escapeRe(info.term) + "(?![\\p{L}\\p{N}_])", "gu");
      var m;
      while ((m = re.exec(text)) !== null) {
        var s = m.index, e = s + m[0].length;
        if (!taken.some(function (t) { return s < t.e && t.s < e; })) { taken.push({ s: s, e: e, info: info }); }
        if (m[0].length === 0) { re.lastIndex++; }
      }
    });
    return taken.sort(function (a, b) { return a.s - b.s; });
  }

  function render() {
    var infos = rows().map(rowInfo);
    infos.forEach(function (i) { i.tr.classList.toggle("off", !i.keep); });
    passages.forEach(function (p, k) {
      var text = texts[k], last = 0, frag = document.createDocumentFragment();
      spans(text, infos).forEach(function (sp) {
        if (sp.s > last) { frag.appendChild(document.createTextNode(text.slice(last, sp.s))); }
        var mark = document.createElement("mark");
        mark.textContent = text.slice(sp.s, sp.e);
        mark.className = "src-" + sp.info.source + (sp.info.keep ? "" : " removed");
        mark.setAttribute("data-term", sp.info.term);
        mark.title = (sp.info.keep ? "click to remove " : "click to restore ") + sp.info.term;
        frag.appendChild(mark);
        last = sp.e;
      });
      if (last < text.length) { frag.appendChild(document.createTextNode(text.slice(last))); }
      p.textContent = "";
      p.appendChild(frag);
    });
  }

  function findRow(term) {
    return rows().map(rowInfo).filter(function (i) { return i.term === term; })[0];
  }

  function addRow(term) {
    var existing = findRow(term);
    if (existing) {
      existing.tr.querySelector("input[type=checkbox]").checked = true;
      existing.tr.querySelector("input.translations").focus();
      render();
      return;
    }
    var blank = rows().filter(function (tr) { return !tr.querySelector("input.term").value.trim(); })[0];
    if (!blank) {
      var index = rows().length + 1000;
      blank = document.createElement("tr");
      blank.innerHTML = '<td><input type="checkbox" checked></td><td><input class="term"></td><td><select></select></td>' +
        '<td><input class="translations" placeholder="e.g. Harold, Henry"></td><td><span class="src src-reviewer">reviewer</span></td>';
      blank.querySelector("input[type=checkbox]").name = "keep_" + index;
      blank.querySelector("input.term").name = "term_" + index;
      blank.querySelector("select").name = "kind_" + index;
      blank.querySelector("select").innerHTML = document.getElementById("kinds-template").innerHTML;
      blank.querySelector("input.translations").name = "translations_" + index;
      table.querySelector("tbody").appendChild(blank);
    }
    blank.querySelector("input.term").value = term;
    blank.querySelector("input[type=checkbox]").checked = true;
    render();
    blank.querySelector("input.translations").focus();
  }

  function addSelection() {
    var sel = window.getSelection();
    var term = sel ? sel.toString().trim() : "";
    if (!term || term.length > 200 || term.indexOf("\n") >= 0) { return false; }
    addRow(term);
    sel.removeAllRanges();
    return true;
  }

  if (table) {
    table.addEventListener("input", render);
    table.addEventListener("change", render);
    passages.forEach(function (p) {
      p.addEventListener("click", function (ev) {
        var mark = ev.target.closest("mark");
        if (!mark || (window.getSelection() && window.getSelection().toString())) { return; }
        var info = findRow(mark.getAttribute("data-term"));
        if (info) {
          var box = info.tr.querySelector("input[type=checkbox]");
          box.checked = !box.checked;
          rows().forEach(function (tr) { tr.classList.remove("active"); });
          info.tr.classList.add("active");
          render();
        }
      });
    });
    var addButton = document.getElementById("add-selection");
    if (addButton) {
      addButton.addEventListener("mousedown", function (ev) { ev.preventDefault(); });  // keep the selection
      addButton.addEventListener("click", addSelection);
    }
    render();
  }

  // ---- keyboard shortcuts: elements with data-shortcut="keys" are clicked
  var form = document.getElementById("answer-form");
  document.addEventListener("keydown", function (ev) {
    if ((ev.ctrlKey || ev.metaKey) && ev.key === "Enter" && form) {
      ev.preventDefault();
      var fix = form.querySelector("button[value=fix]");
      if (fix && document.activeElement && document.activeElement.id === "replacement") { fix.click(); return; }
      if (form.requestSubmit) { form.requestSubmit(); } else { form.submit(); }
      return;
    }
    if (ev.ctrlKey || ev.metaKey || ev.altKey || typing(document.activeElement)) { return; }
    if (ev.key === "?") { ev.preventDefault(); showHelp(); return; }
    if (ev.key === "a" && table) { if (addSelection()) { ev.preventDefault(); } return; }
    var target = Array.prototype.slice.call(document.querySelectorAll("[data-shortcut]")).filter(function (el) {
      return el.getAttribute("data-shortcut").split(" ").indexOf(ev.key) >= 0;
    })[0];
    if (!target) { return; }
    ev.preventDefault();
    if (target.tagName === "SUMMARY") {
      target.parentElement.open = true;
      var area = target.parentElement.querySelector("textarea");
      if (area) { area.focus(); }
      return;
    }
    target.click();
  });
})();
