/* bitttt Studio: the page.  Every button is one call of the API (api/...); the page keeps no state
 * the server does not have, so reloading it loses nothing. */
"use strict";

const $ = id => document.getElementById(id);
const S = {project: null, summary: null, fields: [], presets: {}, notes: {}, liveRun: null, es: null,
           chat: null, charts: {}, selectedRun: null, overlay: new Set(), pollTimer: null};

// -- helpers -------------------------------------------------------------------------------
async function api(path, opts) {
  opts = opts || {};
  const init = {method: opts.method || (opts.body !== undefined ? "POST" : "GET"), headers: {}};
  if (opts.raw !== undefined) { init.body = opts.raw; init.method = "POST"; }
  else if (opts.body !== undefined) { init.body = JSON.stringify(opts.body); init.headers["Content-Type"] = "application/json"; }
  const r = await fetch("api/" + path, init);
  let data = null;
  try { data = await r.json(); } catch (e) { data = {error: `${r.status} ${r.statusText}`}; }
  if (!r.ok) throw new Error((data && data.error) || `${r.status} ${r.statusText}`);
  return data;
}
const P = () => "projects/" + encodeURIComponent(S.project);
function h(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const k in attrs || {}) {
    if (k === "class") e.className = attrs[k];
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), attrs[k]);
    else if (attrs[k] !== false && attrs[k] != null) e.setAttribute(k, attrs[k] === true ? "" : attrs[k]);
  }
  for (const c of kids.flat()) if (c != null) e.append(c instanceof Node ? c : String(c));
  return e;
}
function msg(id, text, kind) { const e = $(id); e.textContent = text || ""; e.className = "msg" + (kind ? " " + kind : ""); }
let toastTimer = null;
function toast(text, err) {
  const t = $("toast"); t.textContent = text; t.className = "toast" + (err ? " err" : ""); t.hidden = false;
  clearTimeout(toastTimer); toastTimer = setTimeout(() => { t.hidden = true; }, err ? 7000 : 3500);
}
function bytes(n) { return n >= 1 << 20 ? (n / (1 << 20)).toFixed(1) + " MiB" : n >= 1024 ? (n / 1024).toFixed(1) + " KiB" : n + " B"; }
function num(n) { return n == null ? "" : Number(n).toLocaleString("en-US"); }
function f4(x) { return x == null ? "" : Number(x).toFixed(4); }
async function guard(btn, msgId, fn) {
  if (btn) btn.disabled = true;
  try { return await fn(); }
  catch (e) { if (msgId) msg(msgId, e.message, "err"); else toast(e.message, true); }
  finally { if (btn) btn.disabled = false; }
}
function fillSelect(sel, items, keep) {
  const old = keep ? sel.value : null;
  sel.replaceChildren(...items.map(([v, label]) => h("option", {value: v}, label)));
  if (old && items.some(([v]) => v === old)) sel.value = old;
}
function checks(box, names, keep) {
  const on = new Set([...box.querySelectorAll("input:checked")].map(i => i.value));
  const first = !box.children.length;
  box.replaceChildren(...names.map(n => h("label", {}, h("input", {type: "checkbox", value: n,
    checked: first || on.has(n) || !keep}), n)));
}
const checked = box => [...box.querySelectorAll("input:checked")].map(i => i.value);

// -- tabs and projects ---------------------------------------------------------------------------
function showTab(name) {
  document.querySelectorAll(".tabs button").forEach(b => b.classList.toggle("active", b.dataset.tab === name));
  document.querySelectorAll(".tab").forEach(s => s.classList.toggle("active", s.id === "tab-" + name));
  for (const c of Object.values(S.charts)) c.draw();
  location.hash = name;
}
async function loadProjects(select) {
  const d = await api("projects");
  $("root-path").textContent = d.root;
  fillSelect($("project-select"), d.projects.map(p => [p, p]));
  const want = select || localStorage.getItem("bitttt.project");
  if (want && d.projects.includes(want)) $("project-select").value = want;
  const has = d.projects.length > 0;
  $("no-project").hidden = has;
  document.querySelector("main").hidden = !has;
  if (has) await openProject($("project-select").value);
}
async function openProject(name) {
  if (S.project !== name) {
    closeStream(); S.liveRun = null; S.chat = null; S.selectedRun = null; S.overlay.clear(); S.overlayInit = false; resetLive();
  }
  S.project = name;
  localStorage.setItem("bitttt.project", name);
  await refresh();
}
async function refresh() {
  if (!S.project) return;
  const s = await api(P());
  S.summary = s;
  renderData(s); renderTrainLists(s); renderRuns(s); renderChatLists(s);
  const active = s.active_run;
  $("activity").textContent = active ? `● training ${active}` : (s.queue.filter(q => q.state === "queued").length ? "queue waiting" : "");
  if (active && (S.liveRun !== active || !S.es)) watchRun(active);
  else if (!S.liveRun && s.runs.length) watchRun(newestRun(s.runs).name);
  schedulePoll(active || s.queue.length);
}
function newestRun(runs) { return runs.slice().sort((a, b) => (b.started || 0) - (a.started || 0))[0]; }
function schedulePoll(busy) {
  clearTimeout(S.pollTimer);
  S.pollTimer = setTimeout(() => refresh().catch(() => {}), busy ? 1500 : 6000);
}

// -- Data -----------------------------------------------------------------------------------------
function renderData(s) {
  const tb = $("raw-table").tBodies[0];
  tb.replaceChildren(...s.raw.map(f => h("tr", {class: "click", onclick: () => preview(f.name)},
    h("td", {}, f.name), h("td", {class: "num"}, bytes(f.bytes)), h("td", {class: "actions"}, h("button", {class: "small"}, "preview")))));
  const names = s.raw.map(f => f.name);
  checks($("tok-files"), names, true); checks($("ds-files"), names, true);
  const toks = s.tokenizers.map(t => [t.name, `${t.name} (${t.vocab_size || "?"} ${t.model_type || ""})`]);
  fillSelect($("ds-tok"), toks, true);
  fillSelect($("tok-view"), [["", "show a tokenizer…"], ...toks], true);
  $("tok-view").hidden = !toks.length;
  $("ds-table").tBodies[0].replaceChildren(...s.datasets.map(d => h("tr", {},
    h("td", {}, d.name), h("td", {class: "num"}, num(d.train_tokens)), h("td", {class: "num"}, num(d.val_tokens)),
    h("td", {class: "num"}, d.vocab_size || d.error))));
}
async function preview(name) {
  const d = await api(`${P()}/raw/${encodeURIComponent(name)}`);
  $("preview-box").hidden = false;
  $("preview-title").textContent = `${d.name} · ${bytes(d.bytes)}${d.truncated ? " · beginning" : ""}`;
  $("preview").textContent = d.text;
}
async function upload() {
  const files = [...$("upload").files];
  if (!files.length) { msg("raw-msg", "choose a file first", "err"); return; }
  const done = [];
  for (const f of files) {
    const d = await api(`${P()}/raw?filename=${encodeURIComponent(f.name)}`, {raw: f});
    done.push(`${d.name}: ${num(d.documents)} document(s), ${bytes(d.bytes)}`);
  }
  msg("raw-msg", "added " + done.join("; "), "ok");
  $("upload").value = "";
  await refresh();
  preview(files[files.length - 1].name);
}
async function addPath() {
  const d = await api(`${P()}/raw/path`, {body: {path: $("raw-path").value}});
  msg("raw-msg", `added ${d.name}: ${num(d.documents)} document(s), ${bytes(d.bytes)}`, "ok");
  $("raw-path").value = "";
  await refresh();
  preview(d.name);
}
async function trainTokenizer() {
  msg("tok-msg", "training…");
  const vocab = Number($("tok-vocab").value);
  const d = await api(`${P()}/tokenizers`, {body: {name: $("tok-name").value.trim(), files: checked($("tok-files")),
    vocab_size: Number.isInteger(vocab) ? vocab : $("tok-vocab").value, model_type: $("tok-type").value}});
  msg("tok-msg", `trained ${d.name}: ${d.vocab_size} pieces (${d.model_type})`, "ok");
  showTokStats(d);
  await refresh();
  $("ds-tok").value = d.name;
}
function showTokStats(d) {
  const box = $("tok-stats");
  box.replaceChildren(
    h("div", {class: "stats"},
      h("div", {class: "stat"}, h("b", {}, d.bytes_per_token), h("span", {}, "bytes per token")),
      h("div", {class: "stat"}, h("b", {}, num(d.vocab_size)), h("span", {}, "vocabulary")),
      h("div", {class: "stat"}, h("b", {}, num(d.pieces_used)), h("span", {}, "pieces used"))),
    h("div", {class: "sub"}, "commonest pieces"),
    h("div", {class: "chips"}, d.top.slice(0, 24).map(t => h("span", {class: "chip", title: `id ${t.id}`},
      showPiece(t.piece), h("i", {}, (t.share * 100).toFixed(1) + "%")))),
    h("div", {class: "sub"}, "a sample, piece by piece"),
    h("div", {class: "encoded", id: "tok-sample"}, d.sample.map(p => h("span", {title: `id ${p.id}`}, p.piece))));
}
function showPiece(p) { return p.replace(/ /g, "␣").replace(/\n/g, "⏎").replace(/\t/g, "⇥"); }
async function prepareData() {
  msg("ds-msg", "");
  const job = await api(`${P()}/datasets`, {body: {name: $("ds-name").value.trim(), files: checked($("ds-files")),
    tokenizer: $("ds-tok").value, val_fraction: Number($("ds-val").value)}});
  const bar = $("ds-progress"); bar.hidden = false; bar.value = 0;
  for (;;) {
    const j = await api("jobs/" + job.id);
    bar.value = j.progress;
    msg("ds-msg", j.message);
    if (j.state === "done") { msg("ds-msg", j.message, "ok"); break; }
    if (j.state === "error") { msg("ds-msg", j.error, "err"); break; }
    await new Promise(r => setTimeout(r, 250));
  }
  setTimeout(() => { bar.hidden = true; }, 800);
  await refresh();
  $("run-data").value = $("ds-name").value.trim();
  updateCommand();
}

// -- Train: the form ---------------------------------------------------------------------------
function buildForm() {
  const box = $("fields");
  const groups = {};
  for (const f of S.fields) (groups[f.group] = groups[f.group] || []).push(f);
  const closed = new Set(["Optimizer", "Other"]);
  box.replaceChildren(...Object.entries(groups).map(([g, fs]) => h("fieldset", {class: closed.has(g) ? "closed" : "", "data-group": g},
    h("legend", {}, h("button", {type: "button", "aria-expanded": !closed.has(g), onclick: ev => {
      const fset = ev.target.closest("fieldset"); fset.classList.toggle("closed");
      ev.target.textContent = (fset.classList.contains("closed") ? "▸ " : "▾ ") + g; }}, (closed.has(g) ? "▸ " : "▾ ") + g)),
    fs.map(f => {
      const id = "f-" + f.key.replace(".", "-");
      const input = f.type === "bool" ? h("input", {type: "checkbox", id, "data-key": f.key, checked: f.default})
                                      : h("input", {type: "text", id, "data-key": f.key, value: f.default, inputmode: "decimal"});
      input.addEventListener("input", updateCommand);
      input.addEventListener("change", updateCommand);
      return h("div", {class: "field"}, h("label", {for: id, title: f.key}, f.key.replace("model.", "")), input,
        h("span", {class: "help"}, `${f.help} · default ${f.default}`));
    }))));
  $("presets").replaceChildren(...Object.keys(S.presets).map(name => h("button", {"data-preset": name,
    title: S.notes[name] || "", onclick: () => applyPreset(name)}, name)), h("span", {class: "sub", id: "preset-note"}));
}
function applyPreset(name) {
  for (const f of S.fields) setField(f.key, f.default);
  for (const [k, v] of Object.entries(S.presets[name])) setField(k, v);
  document.querySelectorAll("#presets button").forEach(b => b.classList.toggle("on", b.dataset.preset === name));
  $("preset-note").textContent = S.notes[name] || "";
  updateCommand();
}
function setField(key, v) {
  const e = document.querySelector(`[data-key="${key}"]`);
  if (!e) return;
  if (e.type === "checkbox") e.checked = !!v; else e.value = v;
}
function formValues() {
  const fields = {};
  for (const f of S.fields) {
    const e = document.querySelector(`[data-key="${f.key}"]`);
    let v;
    if (f.type === "bool") v = e.checked;
    else {
      const t = e.value.trim();
      const n = Number(t);
      v = t === "" || !Number.isFinite(n) ? t : (f.type === "int" && Number.isInteger(n) ? n : (f.type === "float" ? n : t));
      if (f.type === "int" && !Number.isInteger(n)) v = t;  // the server names the field
    }
    e.classList.toggle("changed", v !== f.default);
    fields[f.key] = v;
  }
  return {name: $("run-name").value.trim(), data: $("run-data").value, fields};
}
let cmdTimer = null;
function updateCommand() {
  clearTimeout(cmdTimer);
  msg("run-msg", "");
  cmdTimer = setTimeout(async () => {
    if (!S.project) return;
    const pre = $("run-command");
    try {
      const d = await api(`${P()}/command`, {body: formValues()});
      pre.textContent = d.command; pre.classList.remove("err");
      $("run-start").disabled = $("run-queue").disabled = false;
    } catch (e) {
      pre.textContent = e.message; pre.classList.add("err");
    }
  }, 150);
}
async function estimate() {
  msg("estimate-out", "running a few trial steps…");
  const d = await api(`${P()}/estimate`, {body: formValues()});
  const t = d.total_s;
  const dur = t >= 3600 ? (t / 3600).toFixed(1) + " h" : t >= 60 ? (t / 60).toFixed(1) + " min" : t.toFixed(0) + " s";
  msg("estimate-out", `${(d.step_s * 1000).toFixed(1)} ms per step (${num(Math.round(d.tokens_per_s))} tokens/s), ` +
    `peak RAM ${d.peak_rss_mb.toFixed(0)} MiB, ${num(d.params)} parameters; ${num(d.max_steps)} steps ≈ ${dur}` +
    (d.capped ? " (max_time stops it first)" : "") + (d.busy ? ` — measured while ${d.busy} trains, so slower than alone` : ""), "ok");
}
async function startRun(queue) {
  msg("run-msg", "");
  const d = await api(`${P()}/runs`, {body: {form: formValues(), queue}});
  msg("run-msg", d.state === "queued" ? `${d.run} is queued` : `${d.run} started`, "ok");
  if (d.state === "running") { S.liveRun = null; watchRun(d.run); }
  await refresh();
}

// -- Train: the live run ------------------------------------------------------------------------
function makeCharts() {
  S.charts.loss = new LineChart($("chart-loss"), {title: "loss"});
  S.charts.lr = new LineChart($("chart-lr"), {title: "learning rate"});
  S.charts.tps = new LineChart($("chart-tps"), {title: "tokens / s", zero: true});
  S.charts.ram = new LineChart($("chart-ram"), {title: "RAM (RSS)", unit: "MiB"});
  S.charts.cmp = new LineChart($("chart-compare"), {title: "training loss, runs compared", legend: true});
  S.charts.cmpVal = new LineChart($("chart-compare-val"), {title: "validation loss, runs compared", legend: true});
  S.charts.eval = new LineChart($("chart-eval"), {title: "loss by position in the text", xLabel: "token", legend: true});
}
function resetLive() {
  for (const k of ["loss", "lr", "tps", "ram"]) if (S.charts[k]) S.charts[k].clear();
  $("run-sample").textContent = "—";
  $("live-title").textContent = "No run yet"; $("live-state").textContent = ""; $("live-step").textContent = "";
}
function closeStream() { if (S.es) { S.es.close(); S.es = null; } }
function watchRun(run) {
  closeStream();
  resetLive();
  S.liveRun = run;
  $("live-title").textContent = run;
  updateLiveHead();
  const es = new EventSource(`api/${P()}/runs/${encodeURIComponent(run)}/events`);
  S.es = es;
  es.addEventListener("log", ev => addRecord(JSON.parse(ev.data)));
  es.addEventListener("sample", ev => {
    const s = JSON.parse(ev.data);
    $("run-sample").textContent = s.error ? `(${s.error})` : `[step ${s.step}, ${s.checkpoint}] ${s.text}`;
  });
  es.addEventListener("end", ev => { es.close(); if (S.es === es) S.es = null; refresh(); });
}
function addRecord(r) {
  const c = S.charts;
  if (r.loss !== undefined && r.step !== undefined) {
    c.loss.add("train", r.step, r.loss);
    c.lr.add("lr", r.step, r.lr);
    c.tps.add("tokens/s", r.step, r.tokens_per_s);
    c.ram.add("RSS", r.step, r.rss_mb);
    $("live-step").textContent = `step ${num(r.step)}` + (liveStatus() && liveStatus().max_steps ? ` / ${num(liveStatus().max_steps)}` : "");
  }
  if (r.val_loss !== undefined) c.loss.add("val", r.step, r.val_loss, {color: "#dc2626", dots: true});
}
function liveStatus() { return S.summary && S.summary.runs.find(x => x.name === S.liveRun); }
function updateLiveHead() {
  const st = liveStatus();
  const state = st ? st.state : "";
  const badge = $("live-state");
  badge.textContent = st && st.stop_requested && state === "running" ? "stopping" : state;
  badge.className = "badge " + state;
  const running = state === "running";
  $("run-stop").disabled = !running; $("run-kill").disabled = !running;
  $("live-error").textContent = st && st.state === "failed" ? st.error || "" : "";
}
function renderTrainLists(s) {
  fillSelect($("run-data"), s.datasets.filter(d => !d.error).map(d => [d.name, `${d.name} (${num(d.train_tokens)} tokens)`]), true);
  updateLiveHead();
  const q = s.queue;
  $("queue-list").replaceChildren(...(q.length ? q.map(it => h("div", {class: "row"},
    h("span", {class: "badge " + it.state}, it.state), h("b", {}, it.run), h("span", {class: "sub"}, it.kind),
    it.error ? h("span", {class: "err"}, it.error) : null, h("span", {class: "grow"}),
    h("button", {class: "small", onclick: () => guard(null, null, async () => { await api(`${P()}/queue/${it.id}`, {method: "DELETE"}); refresh(); })}, "remove")))
    : ["empty"]));
}
async function stopRun() { await api(`${P()}/runs/${S.liveRun}/stop`, {body: {}}); toast(`stopping ${S.liveRun}: it saves a checkpoint first`); refresh(); }
async function killRun() {
  if (!confirm(`Kill ${S.liveRun} now? Steps since its last checkpoint are lost.`)) return;
  await api(`${P()}/runs/${S.liveRun}/kill`, {body: {}}); toast(`killed ${S.liveRun}`); refresh();
}

// -- Runs ------------------------------------------------------------------------------------------
function renderRuns(s) {
  const tb = $("runs-table").tBodies[0];
  if (!S.selectedRun && s.runs.length) S.selectedRun = newestRun(s.runs).name;
  let redraw = s.runs.some(r => S.overlay.has(r.name) && r.state === "running");
  if (!S.overlayInit && s.runs.length) {  // the newest few runs are compared from the start
    S.overlayInit = true;
    s.runs.slice().sort((a, b) => (b.started || 0) - (a.started || 0)).slice(0, 4).forEach(r => S.overlay.add(r.name));
    redraw = true;
  }
  if (redraw) drawCompare().catch(() => {});
  tb.replaceChildren(...s.runs.map(r => {
    const cb = h("input", {type: "checkbox", checked: S.overlay.has(r.name), "aria-label": "compare " + r.name,
      onclick: ev => { ev.stopPropagation(); ev.target.checked ? S.overlay.add(r.name) : S.overlay.delete(r.name); drawCompare(); }});
    const m = r.model || {};
    return h("tr", {class: "click" + (r.name === S.selectedRun ? " sel" : ""), "data-run": r.name, onclick: () => { S.selectedRun = r.name; renderRuns(S.summary); }},
      h("td", {}, cb), h("td", {}, h("b", {}, r.name)), h("td", {}, h("span", {class: "badge " + r.state}, r.state)),
      h("td", {class: "num"}, num(r.step) + (r.max_steps ? " / " + num(r.max_steps) : "")), h("td", {class: "num"}, f4(r.loss)),
      h("td", {class: "num"}, f4(r.best_val_loss)), h("td", {class: "num"}, num(r.tokens)),
      h("td", {}, m.hidden_size ? `D=${m.hidden_size} · ${m.num_layers} layers${m.ternary === false ? " · float" : ""}` : ""));
  }));
  renderDetail(s);
  fillSelect($("eval-model"), modelChoices(s), true);
  fillSelect($("eval-on"), [...s.datasets.filter(d => !d.error).map(d => ["dataset:" + d.name, `${d.name} (validation split)`]),
                            ...s.raw.map(f => ["file:" + f.name, f.name])], true);
  $("models-table").tBodies[0].replaceChildren(...(s.models.length ? s.models.map(m => h("tr", {},
    h("td", {}, m.name), h("td", {class: "num"}, bytes(m.bytes)),
    h("td", {class: "actions"}, h("button", {class: "small", onclick: () => chatWith("models/" + m.name)}, "chat"))))
    : [h("tr", {}, h("td", {class: "sub"}, "none yet: export a checkpoint"))]));
}
function modelChoices(s) {
  const out = [];
  for (const r of s.runs) if (r.checkpoints.length) {
    out.push([`runs/${r.name}`, `${r.name} (best)`]);
    for (const c of r.checkpoints) out.push([`runs/${r.name}/checkpoints/${c.name}`, `${r.name} / ${c.name}`]);
  }
  for (const m of s.models) out.push([`models/${m.name}`, `models/${m.name}`]);
  return out;
}
function renderDetail(s) {
  const r = s.runs.find(x => x.name === S.selectedRun);
  $("detail-title").textContent = r ? `Checkpoints of ${r.name}` : "Checkpoints";
  $("detail-command").hidden = !(r && r.command);
  $("detail-command").textContent = r ? r.command : "";
  const busy = r && r.state === "running";
  if (r && $("console-box").open) api(`${P()}/runs/${encodeURIComponent(r.name)}/console`).then(d => {
    const pre = $("console"); const end = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    pre.textContent = d.text; if (end) pre.scrollTop = pre.scrollHeight; }).catch(() => {});
  $("ckpt-table").tBodies[0].replaceChildren(...(r && r.checkpoints.length ? r.checkpoints.map(c => h("tr", {"data-ckpt": c.name},
    h("td", {}, c.name), h("td", {class: "num"}, c.step >= 0 ? num(c.step) : ""), h("td", {class: "num"}, bytes(c.bytes)),
    h("td", {class: "actions"},
      h("button", {class: "small", disabled: busy, onclick: () => guard(null, "detail-msg", () => resume(r.name, c.name))}, "resume"),
      h("button", {class: "small", onclick: () => guard(null, "detail-msg", () => exportCkpt(r.name, c.name))}, "export"),
      h("button", {class: "small", onclick: () => chatWith(`runs/${r.name}/checkpoints/${c.name}`)}, "chat"))))
    : [h("tr", {}, h("td", {class: "sub", colspan: 4}, r ? "no checkpoint yet" : "no run selected"))]));
}
async function resume(run, ckpt) {
  const steps = $("resume-steps").value.trim();
  const body = {checkpoint: ckpt, queue: false};
  if (steps) body.overrides = {max_steps: Number.isInteger(Number(steps)) ? Number(steps) : steps};
  const d = await api(`${P()}/runs/${run}/resume`, {body});
  msg("detail-msg", `${run} resumed${ckpt ? " from " + ckpt : ""}`, "ok");
  S.liveRun = null; watchRun(d.run);
  await refresh();
}
async function exportCkpt(run, ckpt) {
  const name = `${run}-${ckpt.replace(".safetensors", "")}.safetensors`;
  const d = await api(`${P()}/runs/${run}/export`, {body: {checkpoint: ckpt, head: $("export-head").value, name}});
  msg("detail-msg", `exported models/${d.name} (${bytes(d.bytes)}, head ${d.head}, step ${d.step})`, "ok");
  await refresh();
}
async function drawCompare() {
  const runs = [...S.overlay];
  const logs = await Promise.all(runs.map(run => api(`${P()}/runs/${encodeURIComponent(run)}/log`)));
  S.charts.cmp.series.clear(); S.charts.cmpVal.series.clear();
  runs.forEach((run, i) => {
    const recs = logs[i].records;
    S.charts.cmp.set(run, recs.filter(r => r.loss !== undefined && r.step !== undefined).map(r => [r.step, r.loss]));
    S.charts.cmpVal.set(run, recs.filter(r => r.val_loss !== undefined).map(r => [r.step, r.val_loss]), {dots: true});
  });
  S.charts.cmp.draw(); S.charts.cmpVal.draw();
}
async function evaluate() {
  msg("eval-out", "evaluating…");
  const on = $("eval-on").value;
  const body = {model: $("eval-model").value, reset_every: Number($("eval-reset").value)};
  if (on.startsWith("file:")) body.file = on.slice(5); else body.dataset = on.slice(8);
  const d = await api(`${P()}/eval`, {body});
  msg("eval-out", `${d.on}: ${num(d.tokens)} tokens, loss ${d.loss.toFixed(4)} nats/token, perplexity ` +
    `${d.perplexity.toFixed(2)}, ${d.bits_per_byte.toFixed(3)} bits/byte`, "ok");
  S.charts.eval.set(d.model, d.loss_by_position, {dots: true});
}

// -- Chat -----------------------------------------------------------------------------------------
function renderChatLists(s) {
  fillSelect($("chat-model"), modelChoices(s), true);
  $("mem-table").tBodies[0].replaceChildren(...(s.memories.length ? s.memories.map(m => h("tr", {"data-memory": m.name},
    h("td", {}, m.name), h("td", {class: "num sub"}, m.n_tokens != null ? num(m.n_tokens) + " tokens" : m.error || ""),
    h("td", {class: "actions"}, h("button", {class: "small", onclick: () => guard(null, "mem-msg", () => memory("load", m.name))}, "load"))))
    : [h("tr", {}, h("td", {class: "sub"}, "no memory saved yet"))]));
}
function chatWith(ref) { showTab("chat"); fillSelect($("chat-model"), modelChoices(S.summary), true); $("chat-model").value = ref; loadChat(); }
async function loadChat() {
  const d = await api(`${P()}/chat`, {body: {model: $("chat-model").value}});
  S.chat = d;
  $("chat-model-info").textContent = `${d.file} · D=${d.config.hidden_size}, ${d.config.num_layers} layers, V=${d.config.vocab_size}`;
  $("mem-tokens").textContent = num(d.memory_tokens);
  $("chat-log").replaceChildren(h("div", {class: "chat-empty"}, `${d.model} loaded: say something.`));
}
function bubble(role, text) {
  const log = $("chat-log");
  const empty = log.querySelector(".chat-empty"); if (empty) empty.remove();
  const t = h("span", {class: "text"}, text);
  const b = h("div", {class: "bubble " + role}, h("span", {class: "role"}, role), t);
  log.append(b); log.scrollTop = log.scrollHeight;
  return [b, t];
}
function sampling() {
  const out = {};
  for (const k of ["temperature", "top_k", "top_p", "min_p", "repeat_penalty", "max_tokens", "seed"]) {
    const t = $("s-" + k).value.trim(); const n = Number(t);
    out[k] = t !== "" && Number.isFinite(n) ? n : t;
  }
  return out;
}
async function send() {
  if (!S.chat) await loadChat();
  const text = $("chat-input").value;
  if (!text.trim()) return;
  const system = $("chat-system").value.trim();
  const r = await fetch(`api/${P()}/chat/${S.chat.id}/message`, {method: "POST", headers: {"Content-Type": "application/json"},
    body: JSON.stringify({text, system: system || null, sampling: sampling()})});
  if (!r.ok) { let e = {}; try { e = await r.json(); } catch (x) { /* not JSON */ } throw new Error(e.error || r.statusText); }
  if (system && S.chatSystem !== system) { bubble("system", system); S.chatSystem = system; }
  bubble("user", text);
  $("chat-input").value = "";
  const [b, t] = bubble("assistant", "");
  b.classList.add("streaming");
  let pieces = 0;
  const reader = r.body.getReader(); const dec = new TextDecoder();
  let buf = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    buf += dec.decode(value, {stream: true});
    let i;
    while ((i = buf.search(/\r?\n\r?\n/)) >= 0) {
      const block = buf.slice(0, i); buf = buf.slice(i).replace(/^\r?\n\r?\n/, "");
      let ev = "message", data = "";
      for (const line of block.split(/\r?\n/)) {
        if (line.startsWith("event:")) ev = line.slice(6).trim();
        else if (line.startsWith("data:")) data += line.slice(5).trim();
      }
      if (!data) continue;
      const d = JSON.parse(data);
      if (ev === "token") { t.textContent += d.text; pieces += 1; b.dataset.pieces = pieces; $("chat-log").scrollTop = 1e9; }
      else if (ev === "done") {
        $("mem-tokens").textContent = num(d.memory_tokens);
        $("chat-stats").textContent = `${d.stats.decode_tokens} tokens, ${d.stats.decode_tokens_per_s} tokens/s, stopped by ${d.stats.stopped_by}` +
          (d.stats.seed != null ? `, seed ${d.stats.seed}` : "");
      }
    }
  }
  b.classList.remove("streaming");
  if (!t.textContent) t.textContent = "(empty answer)";
}
async function memory(action, name) {
  if (!S.chat) throw new Error("load a model first");
  const d = await api(`${P()}/chat/${S.chat.id}/memory/${action}`, {body: {name: name || $("mem-name").value.trim(),
    overwrite: $("mem-overwrite").checked}});
  $("mem-tokens").textContent = num(d.memory_tokens);
  const what = {save: `saved memory ${d.name}`, load: `loaded memory ${d.name}`, reset: "memory reset",
                sleep: `slept: replayed ${num(d.replayed_tokens)} tokens of logged conversations, saved as ${d.name}`}[action];
  msg("mem-msg", what, "ok");
  if (action === "reset" || action === "load") { S.chatSystem = null; }
  await refresh();
}

// -- wiring ------------------------------------------------------------------------------------------
async function init() {
  makeCharts();
  const pr = await api("presets");
  S.fields = pr.fields; S.presets = pr.presets; S.notes = pr.notes;
  buildForm();
  document.querySelectorAll(".tabs button").forEach(b => b.addEventListener("click", () => showTab(b.dataset.tab)));
  $("project-select").addEventListener("change", e => openProject(e.target.value));
  $("project-create").addEventListener("click", () => guard($("project-create"), null, async () => {
    const d = await api("projects", {body: {name: $("project-new").value.trim()}});
    $("project-new").value = ""; toast(`project ${d.name} created in ${d.path}`);
    await loadProjects(d.name);
  }));
  $("project-new").addEventListener("keydown", e => { if (e.key === "Enter") $("project-create").click(); });
  $("upload-go").addEventListener("click", () => guard($("upload-go"), "raw-msg", upload));
  $("raw-add").addEventListener("click", () => guard($("raw-add"), "raw-msg", addPath));
  $("tok-train").addEventListener("click", () => guard($("tok-train"), "tok-msg", trainTokenizer));
  $("tok-view").addEventListener("change", e => e.target.value && guard(null, "tok-msg", async () =>
    showTokStats(await api(`${P()}/tokenizers/${e.target.value}`))));
  $("ds-prepare").addEventListener("click", () => guard($("ds-prepare"), "ds-msg", prepareData));
  $("run-name").addEventListener("input", updateCommand);
  $("run-data").addEventListener("change", updateCommand);
  $("run-estimate").addEventListener("click", () => guard($("run-estimate"), "estimate-out", estimate));
  $("run-start").addEventListener("click", () => guard($("run-start"), "run-msg", () => startRun(false)));
  $("run-queue").addEventListener("click", () => guard($("run-queue"), "run-msg", () => startRun(true)));
  $("run-stop").addEventListener("click", () => guard($("run-stop"), null, stopRun));
  $("run-kill").addEventListener("click", () => guard($("run-kill"), null, killRun));
  $("eval-go").addEventListener("click", () => guard($("eval-go"), "eval-out", evaluate));
  $("console-box").addEventListener("toggle", () => S.summary && renderDetail(S.summary));
  $("chat-load").addEventListener("click", () => guard($("chat-load"), "mem-msg", loadChat));
  $("chat-send").addEventListener("click", () => guard($("chat-send"), "mem-msg", send));
  $("chat-input").addEventListener("keydown", e => { if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("chat-send").click(); } });
  $("mem-save").addEventListener("click", () => guard($("mem-save"), "mem-msg", () => memory("save")));
  $("mem-reset").addEventListener("click", () => guard($("mem-reset"), "mem-msg", () => memory("reset")));
  $("mem-sleep").addEventListener("click", () => guard($("mem-sleep"), "mem-msg", () => memory("sleep", "sleep")));
  applyPreset("tiny");
  await loadProjects();
  const tab = location.hash.slice(1);
  if (["data", "train", "runs", "chat"].includes(tab)) showTab(tab);
  updateCommand();
}
init().catch(e => toast(e.message, true));
