// clipdex search page: plain JavaScript, no build step, nothing fetched from outside this server.
// Everything that comes from the index (uris, labels) reaches the DOM through textContent or
// setAttribute, never through innerHTML.
"use strict";

(() => {
  const RESTORE_MAX = 600; // back/forward reloads at most this many results of a page seen before
  const startParams = new URLSearchParams(location.search);
  const token = startParams.get("token") || "";
  // results per request (?k= sets it); more pages load on scroll or "Load more"
  const PAGE = Math.min(Math.max(parseInt(startParams.get("k"), 10) || 60, 1), 200);
  const $ = (id) => document.getElementById(id);

  const els = {
    form: $("search"), q: $("q"), label: $("label"), go: $("go"), home: $("home"),
    input: $("image-input"), chip: $("image-chip"), chipName: $("image-chip-name"),
    chipPreview: $("image-chip-preview"), clear: $("image-clear"),
    ready: $("ready"), error: $("error"), summary: $("summary"), results: $("results"),
    empty: $("empty"), more: $("more"), sentinel: $("sentinel"), drop: $("drop"),
    detail: $("detail"), detailImg: $("detail-img"), detailTitle: $("detail-title"),
    detailMeta: $("detail-meta"), detailLabels: $("detail-labels"),
    detailNoLabels: $("detail-nolabels"), like: $("like"), original: $("detail-original"),
  };

  // Uploaded query images live in memory, keyed from history.state: a URL cannot carry them.
  const images = new Map();
  let imageSeq = 0;
  let query = {}; // {q, label, like, image} of the results on screen
  let offset = 0;
  let done = true;
  let loading = null; // the AbortController of the request in flight
  let generation = 0; // bumped by every new search: late pages of an old one are dropped
  let detailId = null;
  let detailOpener = null;
  let ready = false;
  let readyWaiters = [];

  // ---- talking to the API -------------------------------------------------------------

  function withToken(url) {
    if (!token || !url) return url;
    const u = new URL(url, location.href);
    if (u.origin !== location.origin) return url; // never hand the token to another origin
    u.searchParams.set("token", token);
    return u.pathname + u.search;
  }

  function describe(detail, status) {
    if (typeof detail === "string" && detail) return detail;
    if (Array.isArray(detail) && detail.length) {
      return detail.map((d) => {
        const where = Array.isArray(d.loc) ? d.loc.filter((p) => p !== "query" && p !== "body").join(".") : "";
        return (where ? where + ": " : "") + (d.msg || JSON.stringify(d));
      }).join("; ");
    }
    if (status === 401 || status === 403) {
      return "this server needs a token: open the page as /?token=YOUR_TOKEN";
    }
    return "the server answered " + status;
  }

  async function api(path, options = {}) {
    const headers = new Headers(options.headers || {});
    headers.set("Accept", "application/json");
    if (token) headers.set("Authorization", "Bearer " + token);
    let response;
    try {
      response = await fetch(path, { ...options, headers });
    } catch (err) {
      if (err.name === "AbortError") throw err;
      throw new Error("cannot reach the server (" + err.message + ")");
    }
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      body = null;
    }
    if (!response.ok) {
      const error = new Error(describe(body && body.detail, response.status));
      error.status = response.status;
      throw error;
    }
    return body;
  }

  // ---- readiness ------------------------------------------------------------------------

  async function pollReady() {
    for (let delay = 250; ; delay = Math.min(delay * 2, 2000)) {
      try {
        const headers = token ? { Authorization: "Bearer " + token } : {};
        const response = await fetch("/readyz", { headers });
        if (response.ok) break;
        let detail = "";
        try {
          detail = String((await response.json()).detail || "");
        } catch (_) {
          detail = "";
        }
        // the server says why when loading failed (e.g. the model's weights are missing)
        const why = detail && detail !== "the model is loading" ? " (" + detail + ")" : "";
        showReady("Loading the model\u2026 searches start as soon as it is ready." + why);
      } catch (_) {
        showReady("Waiting for the server\u2026");
      }
      await new Promise((resolve) => setTimeout(resolve, delay));
    }
    ready = true;
    els.ready.hidden = true;
    document.body.dataset.ready = "true";
    readyWaiters.forEach((resolve) => resolve());
    readyWaiters = [];
  }

  function showReady(text) {
    els.ready.textContent = text;
    els.ready.hidden = false;
  }

  function whenReady() {
    return ready ? Promise.resolve() : new Promise((resolve) => readyWaiters.push(resolve));
  }

  // ---- the URL holds the query ------------------------------------------------------------

  function queryFromLocation() {
    const p = new URLSearchParams(location.search);
    const q = {};
    for (const key of ["q", "label", "like", "min_score"]) {
      const value = p.get(key);
      if (value) q[key] = value;
    }
    const state = history.state || {};
    if (p.get("image")) q.image = state.image || "missing";
    return q;
  }

  function urlFor(q) {
    const p = new URLSearchParams();
    if (q.q) p.set("q", q.q);
    if (q.like) p.set("like", q.like);
    if (q.image) p.set("image", "1");
    if (q.label) p.set("label", q.label);
    if (q.min_score) p.set("min_score", q.min_score);
    if (PAGE !== 60) p.set("k", String(PAGE));
    if (token) p.set("token", token);
    const search = p.toString();
    return location.pathname + (search ? "?" + search : "");
  }

  function isEmpty(q) {
    return !q.q && !q.like && !q.image;
  }

  function navigate(q) {
    const url = urlFor(q);
    const state = { image: q.image || null, shown: 0 };
    if (url === location.pathname + location.search && !q.image) history.replaceState(state, "", url);
    else history.pushState(state, "", url);
    show(q, 0);
  }

  function rememberShown() {
    const state = { ...(history.state || {}), image: query.image || null, shown: offset };
    history.replaceState(state, "", location.pathname + location.search);
  }

  // ---- searching ----------------------------------------------------------------------

  function setControls(q) {
    els.q.value = q.q || "";
    selectLabel(q.label || "");
    const file = q.image && images.get(q.image);
    if (file) {
      els.chipName.textContent = file.name || "image";
      els.chip.hidden = false;
      setPreview(file);
    } else {
      els.chip.hidden = true;
      setPreview(null);
    }
  }

  function selectLabel(value) {
    if (value && ![...els.label.options].some((o) => o.value === value)) {
      const option = document.createElement("option");
      option.value = value;
      option.textContent = value;
      els.label.append(option);
    }
    els.label.value = value;
  }

  let previewUrl = null;
  function setPreview(file) {
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = file ? URL.createObjectURL(file) : null;
    els.chipPreview.hidden = !previewUrl;
    if (previewUrl) els.chipPreview.src = previewUrl;
    else els.chipPreview.removeAttribute("src");
  }

  function clearResults() {
    if (loading) loading.abort();
    loading = null;
    generation += 1;
    els.results.replaceChildren();
    els.empty.hidden = true;
    els.more.hidden = true;
    els.error.hidden = true;
    offset = 0;
  }

  /** Show the results of `q`, reloading up to `restore` results (back/forward). */
  async function show(q, restore) {
    query = q;
    setControls(q);
    clearResults();
    done = isEmpty(q);
    document.title = isEmpty(q) ? "clipdex" : "clipdex: " + describeQuery(q);
    if (isEmpty(q)) {
      els.summary.textContent = "";
      delete document.body.dataset.state;
      return;
    }
    if (q.image === "missing") {
      done = true;
      els.summary.textContent = "";
      showError("The query image is not kept across page loads: pick or drop it again.");
      return;
    }
    const mine = generation;
    els.summary.textContent = "Searching\u2026";
    document.body.dataset.state = "loading";
    await whenReady();
    const want = Math.min(Math.max(restore || 0, PAGE), RESTORE_MAX);
    while (mine === generation && !done && offset < want) {
      if (!(await loadPage())) break;
    }
  }

  function describeQuery(q) {
    const parts = [];
    if (q.q) parts.push("\u201c" + q.q + "\u201d");
    if (q.image) {
      const file = images.get(q.image);
      parts.push("the image " + ((file && file.name) || "you gave"));
    }
    if (q.like) parts.push("images like #" + q.like);
    let text = parts.join(" + ");
    if (q.label) text += " labelled " + q.label;
    return text;
  }

  /** Fetch the next page of the current query; returns whether it succeeded. */
  async function loadPage() {
    if (loading || done) return false;
    const mine = generation;
    const controller = new AbortController();
    loading = controller;
    els.more.disabled = true;
    document.body.dataset.state = "loading";
    let body;
    try {
      body = await fetchPage(query, offset, controller.signal);
    } catch (err) {
      if (err.name === "AbortError" || mine !== generation) return false;
      loading = null;
      done = true;
      els.more.hidden = true;
      document.body.dataset.state = "error";
      if (offset === 0) els.summary.textContent = "";
      showError(err.message);
      return false;
    }
    if (mine !== generation) return false;
    loading = null;
    const rows = (body && body.results) || [];
    appendTiles(rows, offset);
    offset += rows.length;
    done = rows.length < PAGE;
    els.more.hidden = done;
    els.more.disabled = false;
    summarise();
    rememberShown();
    document.body.dataset.state = "done";
    if (!done) recheckEnd();
    return true;
  }

  function fetchPage(q, from, signal) {
    const fields = { k: String(PAGE), offset: String(from) };
    for (const key of ["q", "label", "like", "min_score"]) if (q[key]) fields[key] = q[key];
    if (q.image) {
      const form = new FormData();
      form.append("image", images.get(q.image));
      for (const [key, value] of Object.entries(fields)) form.append(key, value);
      return api("/api/v1/search", { method: "POST", body: form, signal });
    }
    return api("/api/v1/search?" + new URLSearchParams(fields), { signal });
  }

  function summarise() {
    if (offset === 0) {
      els.summary.textContent = "";
      els.empty.replaceChildren();
      const p = document.createElement("p");
      p.textContent = "No images match " + describeQuery(query) + ".";
      els.empty.append(p);
      if (query.label) {
        const hint = document.createElement("p");
        hint.textContent = "Try \u201call labels\u201d in the label filter.";
        els.empty.append(hint);
      }
      els.empty.hidden = false;
      return;
    }
    const count = offset + (done ? "" : "+");
    els.summary.textContent = count + " result" + (offset === 1 ? "" : "s") + " for " + describeQuery(query);
  }

  function showError(text) {
    els.error.textContent = text;
    els.error.hidden = false;
  }

  // ---- the grid -------------------------------------------------------------------------

  function basename(uri) {
    const clean = String(uri).split(/[?#]/)[0].replace(/\/+$/, "");
    return clean.slice(clean.lastIndexOf("/") + 1) || String(uri);
  }

  function appendTiles(rows, start) {
    const fragment = document.createDocumentFragment();
    rows.forEach((row, i) => {
      const li = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.className = "tile";
      button.dataset.id = String(row.id);
      button.dataset.rank = String(start + i + 1);
      const score = Number(row.score).toFixed(3);
      button.title = String(row.uri);
      button.setAttribute("aria-label", basename(row.uri) + ", score " + score);
      const img = document.createElement("img");
      img.loading = "lazy";
      img.decoding = "async";
      img.alt = "";
      if (row.width && row.height) {
        img.width = row.width;
        img.height = row.height;
      }
      img.addEventListener("error", () => button.classList.add("broken"), { once: true });
      img.src = withToken(row.thumbnail_url);
      const badge = document.createElement("span");
      badge.className = "score";
      badge.textContent = score;
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = basename(row.uri);
      button.append(img, badge, name);
      li.append(button);
      fragment.append(li);
    });
    els.results.append(fragment);
  }

  function tiles() {
    return [...els.results.querySelectorAll(".tile")];
  }

  function moveFocus(current, key) {
    const all = tiles();
    const i = all.indexOf(current);
    if (i < 0) return;
    const top = all[0].offsetTop;
    let columns = all.findIndex((t) => t.offsetTop !== top);
    if (columns < 1) columns = all.length;
    const step = { ArrowRight: 1, ArrowLeft: -1, ArrowDown: columns, ArrowUp: -columns, Home: -i, End: all.length - 1 - i }[key];
    const next = all[Math.min(Math.max(i + step, 0), all.length - 1)];
    next.focus();
    if (i + step >= all.length - columns && !done) loadPage();
  }

  // ---- the large view -----------------------------------------------------------------

  function formatBytes(n) {
    if (n == null) return "?";
    const units = ["bytes", "KB", "MB", "GB"];
    let value = Number(n);
    let unit = 0;
    while (value >= 1024 && unit < units.length - 1) {
      value /= 1024;
      unit += 1;
    }
    return (unit ? value.toFixed(1) : String(value)) + " " + units[unit];
  }

  async function openDetail(tile) {
    const id = tile.dataset.id;
    detailId = id;
    detailOpener = tile;
    els.detailTitle.textContent = tile.title;
    els.detailMeta.replaceChildren();
    els.detailLabels.hidden = true;
    els.detailNoLabels.hidden = true;
    els.detailImg.removeAttribute("src");
    const thumb = tile.querySelector("img");
    if (thumb && thumb.src) els.detailImg.src = thumb.src; // the thumbnail until the original arrives
    if (!els.detail.open) els.detail.showModal();
    els.like.focus();
    let info;
    try {
      info = await api("/api/v1/images/" + encodeURIComponent(id));
    } catch (err) {
      if (detailId !== id) return;
      addMeta("error", err.message);
      return;
    }
    if (detailId !== id) return;
    els.detailTitle.textContent = info.uri;
    const score = tile.querySelector(".score");
    addMeta("score", score ? score.textContent : "");
    addMeta("size", formatBytes(info.size));
    addMeta("pixels", info.width && info.height ? info.width + " \u00d7 " + info.height : "?");
    addMeta("format", info.format || "?");
    addMeta("id", String(info.id));
    const original = withToken(info.image_url);
    const full = new Image();
    full.addEventListener("load", () => {
      if (detailId === id) els.detailImg.src = original;
    });
    full.src = original;
    els.original.href = original;
    const labels = info.labels || [];
    const body = els.detailLabels.tBodies[0];
    body.replaceChildren();
    for (const row of labels) {
      const tr = document.createElement("tr");
      const probability = row.probability == null ? "" : (100 * row.probability).toFixed(1) + "%";
      const score = row.score == null ? "" : Number(row.score).toFixed(3);
      for (const text of [row.label, score, probability, row.run == null ? "" : "#" + row.run]) {
        const td = document.createElement("td");
        td.textContent = String(text);
        tr.append(td);
      }
      body.append(tr);
    }
    els.detailLabels.hidden = labels.length === 0;
    els.detailNoLabels.hidden = labels.length !== 0;
  }

  function addMeta(term, value) {
    const dt = document.createElement("dt");
    dt.textContent = term;
    const dd = document.createElement("dd");
    dd.textContent = value;
    els.detailMeta.append(dt, dd);
  }

  // ---- labels of saved classification runs ----------------------------------------------

  async function loadRuns() {
    let runs;
    try {
      runs = await api("/api/v1/runs");
    } catch (_) {
      return; // the filter stays at "all labels"; searching still works
    }
    const keep = els.label.value;
    els.label.replaceChildren(els.label.options[0]);
    for (const run of runs || []) {
      const group = document.createElement("optgroup");
      const when = run.created_at ? " (" + String(run.created_at).slice(0, 16).replace("T", " ") + ")" : "";
      group.label = "run #" + run.id + when;
      for (const entry of run.labels || []) {
        const option = document.createElement("option");
        option.value = entry.label;
        option.textContent = entry.label + " (" + entry.count + ")";
        group.append(option);
      }
      els.label.append(group);
    }
    els.label.disabled = !(runs && runs.length);
    if (els.label.disabled) els.label.title = "No saved classification runs: clipdex classify saves one";
    selectLabel(keep);
  }

  // ---- the index's size ----------------------------------------------------------------

  async function loadStatus() {
    let status;
    try {
      status = await api("/api/v1/status");
    } catch (_) {
      return;
    }
    if (typeof status.images !== "number") return;
    if (status.images > 0) {
      els.q.placeholder = "Search " + status.images.toLocaleString("en") + " images by text";
    } else if (isEmpty(query)) {
      els.empty.replaceChildren();
      for (const text of [
        "This index has no images yet: run clipdex index FOLDER.",
        "New images show up here without restarting the server.",
      ]) {
        const p = document.createElement("p");
        p.textContent = text;
        els.empty.append(p);
      }
      els.empty.hidden = false;
    }
  }

  // ---- query images: pick or drop ----------------------------------------------------

  function useImage(file) {
    if (!file) return;
    if (file.type && !file.type.startsWith("image/")) {
      showError("\u201c" + file.name + "\u201d is not an image.");
      return;
    }
    imageSeq += 1;
    const key = "i" + imageSeq;
    images.set(key, file);
    navigate({ ...formQuery(), like: undefined, image: key });
  }

  function formQuery() {
    const q = {};
    const text = els.q.value.trim();
    if (text) q.q = text;
    if (els.label.value) q.label = els.label.value;
    if (query.image && !els.chip.hidden) q.image = query.image;
    if (query.min_score) q.min_score = query.min_score;
    return q;
  }

  let dragDepth = 0;
  function hasFiles(event) {
    return event.dataTransfer && [...event.dataTransfer.types].includes("Files");
  }

  // ---- wiring -----------------------------------------------------------------------------

  els.form.addEventListener("submit", (event) => {
    event.preventDefault();
    const q = formQuery();
    if (isEmpty(q)) {
      showError("Type what you are looking for, or pick an image.");
      els.q.focus();
      return;
    }
    navigate(q);
  });

  els.label.addEventListener("change", () => {
    const q = { ...query, label: els.label.value || undefined };
    if (!isEmpty(q)) navigate(q);
  });

  els.input.addEventListener("change", () => {
    useImage(els.input.files[0]);
    els.input.value = "";
  });

  els.clear.addEventListener("click", () => {
    const q = { ...query, image: undefined };
    els.chip.hidden = true;
    setPreview(null);
    navigate(q);
    els.q.focus();
  });

  els.home.addEventListener("click", (event) => {
    event.preventDefault();
    navigate({});
    els.q.focus();
  });

  els.results.addEventListener("click", (event) => {
    const tile = event.target.closest(".tile");
    if (tile) openDetail(tile);
  });

  els.results.addEventListener("keydown", (event) => {
    const tile = event.target.closest(".tile");
    if (!tile || !["ArrowRight", "ArrowLeft", "ArrowUp", "ArrowDown", "Home", "End"].includes(event.key)) return;
    event.preventDefault();
    moveFocus(tile, event.key);
  });

  els.more.addEventListener("click", () => loadPage());

  els.like.addEventListener("click", () => {
    const id = detailId;
    els.detail.close();
    navigate({ like: id, label: query.label });
  });

  els.detail.addEventListener("close", () => {
    detailId = null;
    if (detailOpener && detailOpener.isConnected) detailOpener.focus();
    detailOpener = null;
  });

  // a click on the backdrop (outside the dialog's box) closes it
  els.detail.addEventListener("click", (event) => {
    if (event.target === els.detail) els.detail.close();
  });

  document.addEventListener("keydown", (event) => {
    const typing = /^(INPUT|SELECT|TEXTAREA)$/.test(document.activeElement.tagName);
    if (event.key === "/" && !typing && !els.detail.open) {
      event.preventDefault();
      els.q.focus();
      els.q.select();
    }
  });

  window.addEventListener("popstate", () => {
    if (els.detail.open) els.detail.close();
    const state = history.state || {};
    show(queryFromLocation(), state.shown || 0);
  });

  document.addEventListener("dragenter", (event) => {
    if (!hasFiles(event)) return;
    dragDepth += 1;
    els.drop.hidden = false;
  });
  document.addEventListener("dragleave", () => {
    dragDepth = Math.max(0, dragDepth - 1);
    if (!dragDepth) els.drop.hidden = true;
  });
  document.addEventListener("dragover", (event) => {
    if (hasFiles(event)) event.preventDefault();
  });
  document.addEventListener("drop", (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    dragDepth = 0;
    els.drop.hidden = true;
    useImage(event.dataTransfer.files[0]);
  });

  // more results load when the end of the grid comes near the view
  const nearEnd = new IntersectionObserver((entries) => {
    if (entries.some((e) => e.isIntersecting) && !done && !loading && offset > 0) loadPage();
  }, { rootMargin: "600px 0px" });
  nearEnd.observe(els.sentinel);

  /** Look again after a page arrives: a page too short to fill the view asks for the next. */
  function recheckEnd() {
    nearEnd.unobserve(els.sentinel);
    nearEnd.observe(els.sentinel);
  }

  // ---- start --------------------------------------------------------------------------------
  pollReady();
  loadRuns();
  loadStatus();
  const first = queryFromLocation();
  history.replaceState({ ...(history.state || {}), image: first.image || null }, "", location.pathname + location.search);
  show(first, (history.state && history.state.shown) || 0);
  if (isEmpty(first)) els.q.focus();
})();
