/* attnseg case viewer: sortable case table + one NiiVue instance showing the chosen case.
 * Written for attnseg (same licence as attnseg). Needs the global `niivue` (NiiVue UMD build).
 * window.attnsegViewer.state says what is on screen (used by the browser test). */
(function () {
  "use strict";
  var cfgEl = document.getElementById("attnseg-viewer-config");
  if (!cfgEl) return;
  var cfg = JSON.parse(cfgEl.textContent);
  var $ = function (id) { return document.getElementById(id); };
  var state = { ready: false, loading: false, n: null, caseId: null, channel: null, channelName: null,
    dims: null, volumes: [], labelValues: {}, labelNames: [], opacity: {}, error: null, loads: 0,
    profile: false, readout: "", readyMs: 0 };
  var api = { state: state, show: show, step: step, setChannel: setChannel, toggle: toggle };
  window.attnsegViewer = api;

  // ------------------------------------------------------------------ sortable table
  var table = $("cases-table");
  var tbody = table ? table.tBodies[0] : null;
  function sortKey(row, col) {
    var s = row.cells[col] ? row.cells[col].getAttribute("data-sort") : "";
    if (s === null || s === "") return null;
    var f = Number(s);
    return isFinite(f) ? f : s.toLowerCase();
  }
  function sortBy(th) {
    var col = Number(th.getAttribute("data-col"));
    var asc = th.getAttribute("data-dir") !== "asc";
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (c) { c.removeAttribute("data-dir"); });
    th.setAttribute("data-dir", asc ? "asc" : "desc");
    var rows = Array.prototype.slice.call(tbody.rows);
    rows.sort(function (a, b) {
      var x = sortKey(a, col), y = sortKey(b, col);
      if (x === null && y === null) return 0;
      if (x === null) return 1; // empty cells last in both directions
      if (y === null) return -1;
      var r = x < y ? -1 : x > y ? 1 : 0;
      return asc ? r : -r;
    });
    rows.forEach(function (r) { tbody.appendChild(r); });
  }
  if (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th) {
      th.addEventListener("click", function () { sortBy(th); });
    });
  }
  function order() { // viewable cases in the table's current order
    var rows = tbody ? Array.prototype.slice.call(tbody.rows) : [];
    return rows.map(function (r) { return Number(r.getAttribute("data-n")); })
      .filter(function (n) { return cfg.cases[n] && cfg.cases[n].available; });
  }

  // ------------------------------------------------------------------ case data
  var pending = {};
  window.attnsegCaseData = function (n, data) {
    if (pending[n]) { pending[n].resolve(data); delete pending[n]; }
  };
  function getCase(n) {
    var inline = $("attnseg-case-" + n);
    if (inline) return Promise.resolve(JSON.parse(inline.textContent));
    return new Promise(function (resolve, reject) {
      pending[n] = { resolve: resolve };
      var s = document.createElement("script");
      s.src = cfg.base + "case_" + String(n).padStart(3, "0") + ".js";
      s.onerror = function () { delete pending[n]; reject(new Error("cannot load " + s.src)); };
      s.onload = function () { s.remove(); };
      document.head.appendChild(s);
    });
  }
  function b64buffer(s) {
    var bin = atob(s), u = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) u[i] = bin.charCodeAt(i);
    return u.buffer;
  }
  function volumeBuffer(v) {
    if (v.b64) return Promise.resolve(b64buffer(v.b64));
    return fetch(v.url).then(function (r) {
      if (!r.ok) throw new Error(v.url + ": HTTP " + r.status);
      return r.arrayBuffer();
    });
  }
  function rgb(hex) { return [1, 3, 5].map(function (i) { return parseInt(hex.substr(i, 2), 16); }); }
  function lut(table) { // label table -> NiiVue ColorMap (index 0 transparent)
    var cm = { R: [0], G: [0], B: [0], A: [0], I: [0], labels: [""] };
    table.values.forEach(function (v, i) {
      var c = rgb(table.colours[i]);
      cm.R.push(c[0]); cm.G.push(c[1]); cm.B.push(c[2]); cm.A.push(255); cm.I.push(v); cm.labels.push(table.names[i]);
    });
    return cm;
  }
  function labelName(table, v) {
    var i = table.values.indexOf(Math.round(v));
    return v === 0 ? "–" : i >= 0 ? table.names[i] : String(v);
  }

  // ------------------------------------------------------------------ NiiVue
  var box = $("attnseg-viewer");
  var nv = null, data = null, layers = [], token = 0;
  var LAYERS = { gt: "v-gt", pred: "v-pred", err: "v-err" };
  function fail(msg) {
    state.error = msg; state.loading = false;
    $("v-info").textContent = "Viewer error: " + msg;
  }
  function init() {
    if (!box || !window.niivue || !window.niivue.Niivue) {
      state.error = "NiiVue script not loaded";
      return Promise.resolve(false);
    }
    box.hidden = false;
    var N = window.niivue;
    nv = new N.Niivue({ backColor: [0, 0, 0, 1], show3Dcrosshair: true, isColorbar: false,
      dragAndDropEnabled: false, multiplanarShowRender: N.SHOW_RENDER.ALWAYS,
      multiplanarLayout: N.MULTIPLANAR_TYPE.GRID, crosshairColor: [1, 0.25, 0.25, 0.8], crosshairWidth: 0.4,
      crosshairWidthUnit: "percent", loadingText: "" });
    api.nv = nv; // the NiiVue instance, for scripting the page
    api.nv = nv; // the NiiVue instance, for scripting the page
    return nv.attachToCanvas($("attnseg-canvas")).then(function () {
      nv.setSliceType(N.SLICE_TYPE.MULTIPLANAR);
      nv.setInterpolation(true); // nearest neighbour: voxels and label borders as they are
      nv.onLocationChange = readout;
      return true;
    });
  }
  function opacityOf(key) {
    var on = $(LAYERS[key] + "-on").checked;
    return on ? Number($(LAYERS[key]).value) : 0;
  }
  function applyOpacity() { // only layers that changed: each setOpacity refreshes every layer
    layers.forEach(function (key, i) {
      var o = opacityOf(key);
      if (state.opacity[key] !== o) { state.opacity[key] = o; nv.setOpacity(i + 1, o); }
    });
  }
  function toggle(key) {
    var cb = $(LAYERS[key] + "-on");
    cb.checked = !cb.checked;
    if (nv) applyOpacity();
  }
  function defaultChannel(d) {
    var pref = ["flair", "t2f", "t1ce", "t1c", "t2", "t2w", "t1", "t1n"];
    var names = d.channels.map(function (c) { return String(c).toLowerCase(); });
    for (var i = 0; i < pref.length; i++) if (names.indexOf(pref[i]) >= 0) return names.indexOf(pref[i]);
    return 0;
  }
  function distinctNonZero(arr) {
    var seen = {};
    for (var i = 0; i < arr.length; i++) if (arr[i] !== 0) seen[arr[i]] = true;
    return Object.keys(seen).map(Number).sort(function (a, b) { return a - b; });
  }
  function loadVolume(v, name, colormap) {
    return volumeBuffer(v).then(function (buf) {
      return window.niivue.NVImage.loadFromUrl({ url: buf, name: name, colormap: colormap });
    });
  }
  function show(n, channel) {
    var c = cfg.cases[n];
    if (!nv || !c || !c.available) return Promise.resolve(false);
    var my = ++token, t0 = performance.now();
    state.loading = true; state.ready = false;
    $("v-info").textContent = "loading " + c.id + " …";
    var keep = n === state.n && nv.scene ? Array.prototype.slice.call(nv.scene.crosshairPos) : null;
    return getCase(n).then(function (d) {
      if (my !== token) return false;
      var ch = channel !== undefined && channel !== null ? channel : n === state.n ? state.channel : defaultChannel(d);
      var byKey = {};
      d.volumes.forEach(function (v) { byKey[v.key] = v; });
      var wanted = [["ch" + ch, d.channels[ch], "gray", null]];
      [["gt", d.labels], ["pred", d.labels], ["err", d.errors]].forEach(function (p) {
        if (byKey[p[0]]) wanted.push([p[0], p[0], "gray", p[1]]);
      });
      return Promise.all(wanted.map(function (w) { return loadVolume(byKey[w[0]], w[1] + ".nii.gz", w[2]); }))
        .then(function (imgs) {
          if (my !== token) return false;
          layers = [];
          state.labelValues = {};
          imgs.forEach(function (im, i) {
            if (wanted[i][3]) {
              im.setColormapLabel(lut(wanted[i][3]));
              layers.push(wanted[i][0]);
              state.opacity[wanted[i][0]] = im.opacity = opacityOf(wanted[i][0]);
            }
          });
          // swap all volumes at once: addVolume/removeVolume each re-upload every layer
          nv.volumes = imgs; nv.back = imgs[0]; nv.overlays = imgs.slice(1);
          if (keep) nv.scene.crosshairPos = keep; // same case, other channel: stay where we were
          else if (d.centre_mm) nv.scene.crosshairPos = nv.mm2frac(d.centre_mm, 0); // inside the lesion
          nv.updateGLVolume(); // one upload and one draw (drawing is slow with software WebGL)
          layers.forEach(function (key, i) { state.labelValues[key] = distinctNonZero(nv.volumes[i + 1].img); });
          data = d;
          drawProfile(d.slice_profile);
          var vol0 = nv.volumes[0];
          state.n = n; state.caseId = d.id; state.channel = ch; state.channelName = d.channels[ch];
          nv.createOnLocationChange(); // read-out of the crosshair's voxel
          if (nv.gl) nv.gl.finish(); // ready = drawn (software WebGL draws long after the call)
          state.dims = Array.prototype.slice.call(vol0.hdr.dims, 1, 4);
          state.volumes = nv.volumes.map(function (v) { return v.name; });
          state.labelNames = nv.volumes.length > 1 && nv.volumes[1].colormapLabel
            ? nv.volumes[1].colormapLabel.labels.filter(function (s) { return s; }) : [];
          state.loads += 1; state.error = null;
          render(d, c);
          state.loading = false; state.ready = true;
          if (!state.readyMs) state.readyMs = Math.round(performance.now()); // time to open the page
          state.showMs = Math.round(performance.now() - t0); // time to load and draw this case
          return true;
        });
    }).catch(function (e) { if (my === token) fail(String(e && e.message || e)); return false; });
  }
  function render(d, c) {
    $("v-title").textContent = d.id;
    var back = $("v-back");
    back.href = "#case-row-" + c.n;
    var scores = [];
    Object.keys(c.cells).forEach(function (k) {
      if (k !== "#" && k !== "Case" && k !== "overlay" && c.cells[k] !== "–") scores.push(k + " " + c.cells[k]);
    });
    $("v-scores").textContent = scores.join(" · ") + (c.tag ? "  (" + c.tag + ")" : "");
    var sel = $("v-channel");
    sel.innerHTML = "";
    d.channels.forEach(function (name, i) {
      var o = document.createElement("option");
      o.value = i; o.textContent = name; o.selected = i === state.channel;
      sel.appendChild(o);
    });
    var leg = $("v-legend");
    leg.innerHTML = "";
    function addLegend(title, t) {
      var div = document.createElement("div");
      div.appendChild(document.createTextNode(title + ": "));
      t.values.forEach(function (v, i) {
        var sw = document.createElement("span");
        sw.className = "swatch"; sw.style.background = t.colours[i];
        div.appendChild(sw);
        div.appendChild(document.createTextNode(t.names[i] + "  "));
      });
      leg.appendChild(div);
    }
    addLegend("labels", d.labels);
    if (layers.indexOf("err") >= 0) addLegend("errors", d.errors);
    var info = "grid " + d.dims.join("×") + (d.stride > 1 ? " (every " + d.stride + "th voxel of " +
      d.full_dims.join("×") + ")" : " (cropped from " + d.full_dims.join("×") + ")") +
      (d.quantised ? "; intensities quantised to 8 bits" : "");
    $("v-info").textContent = info;
    Array.prototype.forEach.call(tbody ? tbody.rows : [], function (r) {
      r.classList.toggle("current", Number(r.getAttribute("data-n")) === c.n);
    });
  }
  var profile = null;
  function drawProfile(p) { // slice-weight profile (models with slice attention), next to the planes
    var el = $("v-profile");
    profile = p && p.weights && p.weights.length ? p : null;
    state.profile = !!profile;
    el.hidden = !profile;
    if (profile) { el.firstElementChild.textContent = p.label || "slice weights"; paintProfile(null); }
  }
  function paintProfile(caseSlice) { // bars at the case's slice numbers; red line = the crosshair's slice
    var p = profile, cv = $("v-profile").querySelector("canvas"), g = cv.getContext("2d");
    var n = data.full_dims[p.axis] || 1, w = cv.width, h = cv.height;
    var mx = Math.max.apply(null, p.weights) || 1;
    var step = p.slices.length > 1 ? p.slices[1] - p.slices[0] : n;
    g.clearRect(0, 0, w, h);
    g.fillStyle = "#0b5cad";
    p.weights.forEach(function (v, i) {
      var bh = Math.max(v / mx, 0) * (h - 4), x0 = (p.slices[i] - step / 2 + 0.5) / n * w;
      g.fillRect(x0, h - bh, Math.max(step / n * w - 1, 1), bh);
    });
    if (caseSlice !== null) {
      g.strokeStyle = "#e02020"; g.lineWidth = 2;
      var x = (caseSlice + 0.5) / n * w;
      g.beginPath(); g.moveTo(x, 0); g.lineTo(x, h); g.stroke();
    }
    state.profileSlice = caseSlice;
  }
  function fileVoxel(mm) { // voxel index in the case's own files (NiiVue's loc.vox is in RAS order)
    var m = data && data.world_to_voxel;
    if (!m || !mm) return null;
    return [0, 1, 2].map(function (k) {
      var v = m[k][0] * mm[0] + m[k][1] * mm[1] + m[k][2] * mm[2] + m[k][3];
      return data.origin[k] + Math.round(v) * data.stride;
    });
  }
  function readout(loc) {
    if (!data || !loc || !loc.values) return;
    var parts = [];
    loc.values.forEach(function (v, i) {
      if (i === 0) parts.push(data.channels[state.channel] + " " + (Math.round(v.value * 100) / 100));
      else {
        var key = layers[i - 1];
        var t = key === "err" ? data.errors : data.labels;
        parts.push({ gt: "ground truth", pred: "prediction", err: "error" }[key] + ": " + labelName(t, v.value));
      }
    });
    var vox = fileVoxel(loc.mm);
    $("v-readout").textContent = (vox ? "voxel (" + vox.join(", ") + ")  " : "") + parts.join(" · ");
    if (profile && vox) paintProfile(vox[profile.axis]);
    state.readout = $("v-readout").textContent;
  }
  function step(delta) {
    var o = order();
    if (!o.length) return Promise.resolve(false);
    var i = o.indexOf(state.n);
    var next = o[(i < 0 ? 0 : (i + delta + o.length) % o.length)];
    var hash = "#case=" + encodeURIComponent(cfg.cases[next].id);
    if (location.hash === hash) return show(next);
    location.hash = hash; // the hashchange handler shows it (links in the table do the same)
    return Promise.resolve(true);
  }
  function setChannel(i) { return state.n === null ? Promise.resolve(false) : show(state.n, i); }
  function fromHash() {
    var m = /^#case=(.*)$/.exec(location.hash);
    if (!m) return null;
    var id = decodeURIComponent(m[1]);
    for (var i = 0; i < cfg.cases.length; i++) if (cfg.cases[i].id === id) return i;
    return null;
  }

  init().then(function (ok) {
    if (!ok) return;
    $("v-prev").addEventListener("click", function () { step(-1); });
    $("v-next").addEventListener("click", function () { step(1); });
    $("v-channel").addEventListener("change", function (e) { setChannel(Number(e.target.value)); });
    Object.keys(LAYERS).forEach(function (k) {
      $(LAYERS[k]).addEventListener("input", applyOpacity);
      $(LAYERS[k] + "-on").addEventListener("change", applyOpacity);
    });
    window.addEventListener("hashchange", function () {
      var n = fromHash();
      if (n !== null && n !== state.n) { show(n); box.scrollIntoView({ block: "nearest" }); }
    });
    document.addEventListener("keydown", function (e) {
      var t = e.target && e.target.tagName;
      if (t === "INPUT" || t === "SELECT" || t === "TEXTAREA" || e.ctrlKey || e.metaKey || e.altKey) return;
      if (e.key === "j" || e.key === "PageDown") { step(1); e.preventDefault(); }
      else if (e.key === "k" || e.key === "PageUp") { step(-1); e.preventDefault(); }
      else if (e.key === "m" && data) setChannel((state.channel + 1) % data.channels.length);
      else if (e.key === "g") toggle("gt");
      else if (e.key === "p") toggle("pred");
      else if (e.key === "e") toggle("err");
    });
    var first = fromHash();
    if (first !== null) box.scrollIntoView(); // opened from a link to a case
    var o = order();
    if (first === null) first = o.length ? o[0] : null;
    if (first === null) { $("v-info").textContent = "no case to show"; state.error = "no case"; return; }
    return show(first);
  }).catch(function (e) { fail(String(e && e.message || e)); });
})();
