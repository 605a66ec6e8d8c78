// lancer's console: plain DOM over the public REST API (/api/v1), no framework, no build.
// Every value from the API reaches the page as text (never as HTML): names, logs and
// results are tenants' data.

const KEY = "lancer.api-key";
const view = document.getElementById("view");
let active = null; // the timers of the view on screen, stopped when it changes

// ---- the API --------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(path, { method = "GET", body, file, text = false } = {}) {
  const headers = {};
  const key = sessionStorage.getItem(KEY);
  if (key) headers.Authorization = `Bearer ${key}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (file !== undefined) headers["Content-Type"] = "application/octet-stream";
  const response = await fetch(`/api/v1${path}`, {
    method, headers, body: file ?? (body === undefined ? undefined : JSON.stringify(body)),
  });
  if (response.status === 401) {
    askForKey(key ? "That key was not accepted." : "");
    throw new ApiError(401, "UNAUTHENTICATED", "An API key is needed.");
  }
  if (!response.ok) {
    const error = await response.json().catch(() => ({}));
    const { code = "ERROR", message = response.statusText } = error.error || {};
    throw new ApiError(response.status, code, message);
  }
  return text ? response : response.json();
}

function askForKey(problem) {
  const dialog = document.getElementById("key-dialog");
  const error = document.getElementById("key-error");
  error.textContent = problem;
  error.hidden = !problem;
  if (!dialog.open) dialog.showModal();
}

document.getElementById("key-form").addEventListener("submit", () => {
  sessionStorage.setItem(KEY, document.getElementById("key-input").value.trim());
  document.getElementById("key-input").value = "";
  route();
});

document.getElementById("sign-out").addEventListener("click", async () => {
  await keyCookie(null);
  sessionStorage.removeItem(KEY);
  location.reload();
});

/** The key the endpoint cookie was last set to in this tab. */
let cookieKey = null;

/**
 * The key as a cookie for the endpoint proxy only (the server reads it nowhere else): a
 * served page opened from a link is a navigation, which carries no Authorization header.
 * The server sets it, HttpOnly, so no script on a served page can read it.
 */
async function keyCookie(key) {
  if (key === cookieKey) return;
  const auth = key || sessionStorage.getItem(KEY);
  const headers = auth ? { Authorization: `Bearer ${auth}` } : {};
  const answer = await fetch("/api/v1/endpoint-key", { method: key ? "PUT" : "DELETE", headers });
  if (answer.ok) cookieKey = key;
}

// ---- DOM helpers ----------------------------------------------------------------------

/** An element with attributes (`on*` become listeners) and children (strings as text). */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "class") node.className = value;
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

const badge = (status) => el("span", { class: `badge ${status}` }, status);

function bar(fraction) {
  const percent = Math.max(0, Math.min(100, (fraction ?? 0) * 100));
  const fill = el("span");
  fill.style.width = `${percent.toFixed(1)}%`; // CSSOM, which the page's policy allows
  return el("div", { class: "bar", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100,
                     "aria-valuenow": Math.round(percent) },
            fill);
}

function when(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  return date.toLocaleString(undefined, { dateStyle: "short", timeStyle: "medium" });
}

function took(start, end) {
  if (!start) return "";
  const ms = (end ? new Date(end) : new Date()) - new Date(start);
  const s = Math.max(0, Math.round(ms / 1000));
  return s < 90 ? `${s} s` : s < 5400 ? `${Math.round(s / 60)} min` : `${(s / 3600).toFixed(1)} h`;
}

function bytes(n) {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let unit = 0;
  while (n >= 1000 && unit < units.length - 1) {
    n /= 1000;
    unit += 1;
  }
  return `${unit ? n.toFixed(n < 10 ? 2 : 1) : n} ${units[unit]}`;
}

/** A metric as people read it: integers whole, other numbers to 4 significant digits. */
function metric(v) {
  if (typeof v !== "number") return JSON.stringify(v);
  return Number.isInteger(v) ? String(v) : String(Number(v.toPrecision(4)));
}

function facts(pairs) {
  return el("dl", { class: "facts" },
            pairs.filter(([, v]) => v !== undefined && v !== null && v !== "")
                 .flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
}

function table(headers, rows, empty = "Nothing here yet.") {
  if (!rows.length) return el("p", { class: "muted" }, empty);
  return el("div", { class: "table-wrap" },
            el("table", {},
               el("thead", {}, el("tr", {}, headers.map(([label, cls]) => el("th", { class: cls }, label)))),
               el("tbody", {}, rows)));
}

const json = (value) => el("pre", {}, JSON.stringify(value, null, 2));
const link = (href, text) => el("a", { href }, text);
// UUIDv7 ids share their leading (time) digits, so the tail tells tasks apart.
const short = (id) => (id && id.length > 12 ? `…${id.slice(-8)}` : id);

// ---- charts ---------------------------------------------------------------------------

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  node.append(...children);
  return node;
}

/** A line chart of `points` ([x, y] pairs) with its extremes labelled: plain SVG. */
function chart(id, title, xLabel, points) {
  const [w, h, left, bottom, pad] = [420, 200, 52, 28, 10];
  const xs = points.map(([x]) => x);
  const ys = points.map(([, y]) => y);
  const [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  if (y0 === y1) [y0, y1] = [y0 - 1, y1 + 1];
  const px = (x) => left + (x1 === x0 ? (w - left - pad) / 2 : ((x - x0) / (x1 - x0)) * (w - left - pad));
  const py = (y) => pad + (1 - (y - y0) / (y1 - y0)) * (h - bottom - pad);
  const line = points.map(([x, y]) => `${px(x).toFixed(1)},${py(y).toFixed(1)}`).join(" ");
  const label = (x, y, text, anchor = "end") => svg("text", { x, y, "text-anchor": anchor }, text);
  const picture = svg("svg", { viewBox: `0 0 ${w} ${h}`, class: "chart", role: "img",
                               "aria-label": `${title} by ${xLabel}` },
    svg("line", { x1: left, y1: h - bottom, x2: w - pad, y2: h - bottom, class: "axis" }),
    svg("line", { x1: left, y1: pad, x2: left, y2: h - bottom, class: "axis" }),
    label(left - 4, pad + 4, metric(y1)), label(left - 4, h - bottom, metric(y0)),
    label(left, h - 8, metric(x0), "start"), label(w - pad, h - 8, metric(x1)),
    label((w + left) / 2, h - 8, xLabel, "middle"),
    svg("polyline", { points: line, class: "series" }),
    ...(points.length <= 60 ? points.map(([x, y]) => svg("circle", { cx: px(x), cy: py(y), r: 2.5 })) : []));
  return el("figure", { class: "card chart-card", id, "data-points": points.length },
            el("figcaption", {}, title, " ",
               el("span", { class: "muted" }, `last ${metric(ys[ys.length - 1])}`)),
            picture);
}

/**
 * One chart per numeric metric in a history of reports. Its x is `epoch` or `step` when
 * that numbers its reports one to one (loss per epoch), else the percentage done when
 * every report has one, else seconds since the first (as the runner read them).
 */
function metricCharts(points) {
  const start = points[0]?.at ? new Date(points[0].at) : 0;
  const series = new Map();
  for (const p of points) {
    for (const [name, value] of Object.entries(p.metrics || {})) {
      if (typeof value !== "number" || name === "epoch" || name === "step") continue;
      if (!series.has(name)) series.set(name, []);
      series.get(name).push({ metrics: p.metrics, fraction: p.fraction,
                              seconds: (new Date(p.at) - start) / 1000, value });
    }
  }
  return [...series].map(([name, reports]) => {
    const by = ["epoch", "step"].find((key) => {
      const xs = reports.map((r) => r.metrics[key]);
      return xs.every((x) => typeof x === "number") && new Set(xs).size === xs.length;
    });
    const done = !by && reports.every((r, i) => typeof r.fraction === "number"
                                           && (i === 0 || r.fraction >= reports[i - 1].fraction));
    const xy = reports.map((r) => [by ? r.metrics[by] : done ? r.fraction * 100 : r.seconds, r.value]);
    return chart(`chart-${name}`, name, by || (done ? "% done" : "seconds"), xy);
  });
}

function show(...nodes) {
  view.replaceChildren(...nodes);
}

function failure(error) {
  if (error.status === 401) return show(el("p", { class: "muted" }, "Waiting for an API key."));
  show(el("h1", {}, "Could not load this page"),
       el("p", { class: "error" }, `${error.code || "ERROR"}: ${error.message}`));
}

/** Runs `tick` now and every `ms` while this view is on screen. */
function every(ms, tick) {
  let stopped = false;
  let timer = null;
  const run = async () => {
    try {
      await tick();
    } catch (error) {
      if (!stopped) failure(error);
      return;
    }
    if (!stopped) timer = setTimeout(run, ms);
  };
  active = { stop() { stopped = true; clearTimeout(timer); } };
  return run();
}

// ---- tasks ----------------------------------------------------------------------------

const STATUSES = ["", "pending", "running", "completed", "failed", "cancelled"];

async function tasksView(query) {
  const status = query.get("status") || "";
  const name = query.get("name") || "";
  const token = query.get("page") || "";
  const select = el("select", { id: "status-filter", "aria-label": "Status",
                                onchange: (e) => go("tasks", { status: e.target.value, name }) },
                    STATUSES.map((s) => el("option", { value: s, selected: s === status }, s || "any status")));
  const filter = el("input", { id: "name-filter", type: "search", placeholder: "name starts with",
                               "aria-label": "Name starts with", value: name,
                               onchange: (e) => go("tasks", { status, name: e.target.value.trim().toLowerCase() }) });
  const body = el("div");
  const pager = el("div", { class: "toolbar" });
  show(el("h1", {}, "Tasks"), el("div", { class: "toolbar" }, select, filter), body, pager);
  const params = new URLSearchParams({ limit: "50" });
  if (status) params.set("status", status);
  if (name) params.set("name", name);
  if (token) params.set("page_token", token);
  await every(2000, async () => {
    const page = await api(`/tasks?${params}`);
    const tasks = page.tasks;
    body.replaceChildren(table(
      [["Name"], ["Status"], ["Progress"], ["Created", "wide"], ["Took", "num wide"], ["Id", "wide"]],
      tasks.map((t) => el("tr", { "data-task": t.id },
        el("td", {}, link(`#/tasks/${t.id}`, t.spec.name)),
        el("td", {}, badge(t.status)),
        el("td", {}, t.status === "running" ? bar(t.progress?.fraction) : ""),
        el("td", { class: "wide" }, when(t.created_at)),
        el("td", { class: "num wide" }, took(t.started_at, t.finished_at)),
        el("td", { class: "wide" }, el("code", {}, short(t.id))))),
      name || status ? "No task matches." : "No tasks yet."));
    pager.replaceChildren(
      token ? el("button", { onclick: () => go("tasks", { status, name }) }, "First page") : "",
      page.next_page_token
        ? el("button", { onclick: () => go("tasks", { status, name, page: page.next_page_token }) }, "Next page")
        : "");
  });
}

async function taskView(id) {
  const head = el("div");
  const progress = el("div");
  const actions = el("div", { class: "toolbar" });
  const outcome = el("div");
  const charts = el("div", { class: "grid", id: "charts" });
  const attempts = el("div", { class: "toolbar", id: "attempts" });
  const log = el("pre", { class: "log", id: "log", "aria-label": "Log" });
  show(head, progress, charts, actions, outcome, el("h2", {}, "Log"), attempts, log);
  let offset = 0;
  let attempt = 0; // the attempt whose log and charts are on screen
  let chosen = null; // an earlier attempt picked by the user; null follows the latest
  let charted = null; // the report the charts last showed
  await every(1000, async () => {
    const task = await api(`/tasks/${encodeURIComponent(id)}`);
    renderTask(task, { head, progress, actions, outcome });
    const wanted = chosen ?? task.attempt;
    if (wanted !== attempt) {
      attempt = wanted;
      offset = 0;
      log.textContent = "";
      charted = null;
    }
    const numbers = Array.from({ length: task.attempt }, (_, i) => i + 1);
    attempts.replaceChildren(...(task.attempt > 1 ? [
      el("span", { class: "muted" }, "Attempt"),
      ...numbers.map((n) => el("button", { "aria-pressed": String(n === attempt), class: "attempt",
                                           onclick: () => { chosen = n === task.attempt ? null : n; } }, n)),
    ] : []));
    const latest = JSON.stringify([attempt, task.progress, task.status]);
    if (attempt > 0 && latest !== charted) {
      charted = latest;
      const history = await api(`/tasks/${encodeURIComponent(id)}/progress?attempt=${attempt}`);
      charts.replaceChildren(...metricCharts(history.points));
    }
    if (attempt > 0) {
      const response = await api(`/tasks/${encodeURIComponent(id)}/logs?offset=${offset}&attempt=${attempt}`,
                                 { text: true });
      const chunk = await response.text();
      offset = Number(response.headers.get("x-next-offset") || offset);
      if (chunk) {
        const atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
        log.append(chunk);
        if (atEnd) log.scrollTop = log.scrollHeight;
      }
    }
  });
}

function renderTask(task, { head, progress, actions, outcome }) {
  const s = task.spec;
  head.replaceChildren(
    el("h1", {}, s.name, " ", badge(task.status)),
    facts([["Id", el("code", {}, task.id)], ["Script", s.script], ["Input", s.input || "—"],
           ["Output", s.output || "—"], ["Attempt", `${task.attempt} of ${s.max_attempts}`],
           ["Backend", task.backend], ["Sandbox", task.sandbox],
           ["Pipeline", task.lineage?.pipeline &&
             link(`#/pipelines/${task.lineage.pipeline}`, `${task.lineage.pipeline} (${task.lineage.step})`)],
           ["Created", when(task.created_at)], ["Started", when(task.started_at)],
           ["Finished", when(task.finished_at)], ["Took", took(task.started_at, task.finished_at)],
           ["Endpoint", task.endpoint && task.status === "running" &&
             el("span", {}, el("a", { href: `/api/v1/tasks/${encodeURIComponent(task.id)}/endpoint/`, id: "endpoint-link" },
                               "open through lancer"), " ", el("code", { class: "muted" }, task.endpoint))],
           ["Params", Object.keys(s.params || {}).length ? JSON.stringify(s.params) : ""]]));
  const p = task.progress;
  progress.replaceChildren(...(p ? [
    el("h2", {}, "Progress"),
    el("div", { class: "progress-line" }, bar(p.fraction),
       el("span", { id: "progress-text" }, p.fraction == null ? "" : `${Math.round(p.fraction * 100)}%`)),
    p.message ? el("p", { id: "progress-message" }, p.message) : "",
    p.metrics ? facts(Object.entries(p.metrics).map(([k, v]) => [k, metric(v)])) : "",
  ] : []));
  const live = task.status === "pending" || task.status === "running";
  actions.replaceChildren(
    live ? el("button", { class: "danger", id: "cancel", onclick: () => cancelTask(task.id) }, "Cancel") : "",
    !live ? el("button", { id: "run-again", onclick: () => runAgain(task) }, "Run again") : "");
  outcome.replaceChildren(
    ...(task.error ? [el("h2", {}, "Error"), el("p", { class: "error" }, `${task.error.code}: ${task.error.message}`)] : []),
    ...(task.result ? [el("h2", {}, "Result"), json(task.result)] : []));
}

async function cancelTask(id) {
  if (!confirm("Cancel this task?")) return;
  await api(`/tasks/${encodeURIComponent(id)}/cancel`, { method: "POST" }).catch(failure);
}

/** Submits the same spec as a new task (no idempotency key: it is a new run). */
async function runAgain(task) {
  const { idempotency_key: _, ...spec } = task.spec;
  try {
    const created = await api("/tasks", { method: "POST", body: spec });
    location.hash = `#/tasks/${created.id}`;
  } catch (error) {
    failure(error);
  }
}

// ---- pipelines ------------------------------------------------------------------------

async function pipelinesView() {
  const body = el("div");
  show(el("h1", {}, "Pipelines"), body);
  await every(2000, async () => {
    const page = await api("/pipelines?limit=50");
    body.replaceChildren(table(
      [["Name"], ["Status"], ["Steps"], ["Created", "wide"], ["Id", "wide"]],
      page.pipelines.map((p) => el("tr", {},
        el("td", {}, link(`#/pipelines/${p.id}`, p.spec.name)),
        el("td", {}, badge(p.status)),
        el("td", {}, p.steps.map((s) => badge(s.status)).flatMap((b, i) => (i ? [" ", b] : [b]))),
        el("td", { class: "wide" }, when(p.created_at)),
        el("td", { class: "wide" }, el("code", {}, short(p.id))))),
      "No pipelines yet."));
  });
}

async function pipelineView(id) {
  const head = el("div");
  const dag = el("div", { class: "dag", id: "dag" });
  const actions = el("div", { class: "toolbar" });
  show(head, actions, el("h2", {}, "Steps"), dag);
  await every(1500, async () => {
    const p = await api(`/pipelines/${encodeURIComponent(id)}`);
    head.replaceChildren(el("h1", {}, p.spec.name, " ", badge(p.status)),
      facts([["Id", el("code", {}, p.id)], ["Created", when(p.created_at)], ["Finished", when(p.finished_at)],
             ["Schedule", p.spec.schedule], ["Cache", p.spec.cache ? "on" : "off"]]));
    const live = p.status === "running" || p.status === "pending" || p.status === "scheduled";
    actions.replaceChildren(
      live ? el("button", { class: "danger", onclick: () => pipelineAction(p.id, "cancel") }, "Cancel") : "",
      p.status === "failed" || p.status === "cancelled"
        ? el("button", { onclick: () => pipelineAction(p.id, "retry") }, "Retry") : "");
    dag.replaceChildren(...levels(p.spec.steps).flatMap((names, depth) => [
      depth ? el("div", { class: "dag-arrow", "aria-hidden": "true" }, "→") : "",
      el("div", { class: "dag-level" }, names.map((name) => {
        const i = p.spec.steps.findIndex((s) => s.name === name);
        const [step, spec] = [p.steps[i], p.spec.steps[i]];
        return el("div", { class: "card", "data-step": step.name },
          el("strong", {}, step.name), " ", badge(step.status),
          spec.after?.length ? el("div", { class: "after" }, `after ${spec.after.join(", ")}`) : "",
          step.cached_from ? el("div", { class: "muted" }, "from the cache") : "",
          step.task_id ? el("div", {}, link(`#/tasks/${step.task_id}`, `task ${short(step.task_id)}`)) : "",
          step.error ? el("div", { class: "error" }, step.error.message) : "");
      })),
    ]));
  });
}

/** Step names by depth: a step sits one column right of the deepest step it waits for. */
function levels(steps) {
  const depth = new Map();
  const of = (name, seen = new Set()) => {
    if (depth.has(name)) return depth.get(name);
    const step = steps.find((s) => s.name === name);
    const after = (step?.after || []).filter((a) => !seen.has(a));
    const d = after.length ? 1 + Math.max(...after.map((a) => of(a, new Set([...seen, name])))) : 0;
    depth.set(name, d);
    return d;
  };
  const columns = [];
  for (const step of steps) (columns[of(step.name)] ||= []).push(step.name);
  return columns.filter(Boolean);
}

async function pipelineAction(id, action) {
  await api(`/pipelines/${encodeURIComponent(id)}/${action}`, { method: "POST" }).catch(failure);
}

// ---- datasets and models --------------------------------------------------------------

async function artifactsView(kind) {
  const items = await api(`/${kind}`);
  show(el("h1", {}, kind === "datasets" ? "Datasets" : "Models"),
       table([["Name"], ["Rows", "num"], ["Columns", "wide"]],
             items.map((a) => el("tr", {},
               el("td", {}, link(`#/${kind}/${encodeURIComponent(a.id)}`, a.id)),
               el("td", { class: "num" }, a.num_rows),
               el("td", { class: "wide" }, Object.keys(a.schema || {}).join(", ")))),
             `No ${kind} yet.`));
}

async function artifactView(kind, id) {
  const a = await api(`/${kind}/${encodeURIComponent(id)}`);
  const rows = el("div", { id: "rows" });
  const history = el("div", { id: "model-versions" });
  show(el("h1", {}, a.id),
       facts([["Rows", a.num_rows], ["Version", a.version], ["Size", bytes(a.size_bytes)],
              ["Path", a.path]]),
       ...(a.model ? newestModel(a.model, history) : []),
       el("h2", {}, "Schema"),
       table([["Column"], ["Type"], ["Nullable", "wide"]],
             a.fields.map((f) => el("tr", {}, el("td", {}, f.name), el("td", {}, el("code", {}, f.type)),
                                    el("td", { class: "wide" }, f.nullable ? "yes" : "no")))),
       el("h2", {}, "Versions"),
       table([["Version", "num"], ["Written"], ["By task"], ["From", "wide"]],
             [...a.versions].reverse().map((v) => el("tr", {},
               el("td", { class: "num" }, v.version),
               el("td", {}, when(v.timestamp)),
               el("td", {}, v.task_id ? link(`#/tasks/${v.task_id}`, short(v.task_id)) : "—"),
               el("td", { class: "wide" }, from(v))))),
       ...(kind === "datasets" ? [el("h2", {}, "Rows"), rows] : []));
  if (kind === "datasets") await rowsPage(a, rows, 0);
  else await modelVersions(a, history);
}

/** The newest model's metrics, its training by epoch when it kept a history, its params. */
function newestModel(model, history) {
  const metrics = model.metrics || {};
  const epochs = Array.isArray(metrics.history) ? metrics.history.filter((h) => h && typeof h === "object") : [];
  return [
    el("h2", {}, "Newest model"),
    facts(Object.entries(metrics).filter(([, v]) => typeof v !== "object").map(([k, v]) => [k, metric(v)])),
    ...(epochs.length ? [el("h2", {}, "Its training, by epoch"),
                         el("div", { class: "grid", id: "model-training" }, ...metricCharts(epochs.map((h) => ({ metrics: h }))))] : []),
    el("h2", {}, "Params"), json(model.params || {}), history,
  ];
}

const from = (v) => (v.input_path ? `${v.input_path}${v.input_version ? ` @ v${v.input_version}` : ""}` : "");

const PAGE_ROWS = 20;

/** A page of a dataset's rows, image columns drawn as pictures, with Previous and Next. */
async function rowsPage(a, into, offset) {
  const page = await api(`/datasets/${encodeURIComponent(a.id)}/rows?offset=${offset}&limit=${PAGE_ROWS}`);
  const move = (to) => rowsPage(a, into, to).catch(failure);
  const last = offset + page.rows.length;
  into.replaceChildren(
    el("div", { class: "toolbar" },
       el("button", { id: "rows-previous", disabled: offset === 0, onclick: () => move(Math.max(0, offset - PAGE_ROWS)) },
          "Previous"),
       el("span", { class: "muted" }, page.rows.length ? `rows ${offset + 1}–${last} of ${page.total_rows}` : "no rows"),
       el("button", { id: "rows-next", disabled: page.next_offset == null, onclick: () => move(page.next_offset) },
          "Next")),
    table(page.fields.map((f) => [f.name]),
          page.rows.map((row) => el("tr", {}, page.fields.map((f) => el("td", {}, cell(row[f.name], f)))))));
}

/** A value as the rows table shows it: a picture, a size, or text. */
function cell(value, field) {
  const shape = field.image || pictureShape(value);
  if (shape) return picture(value, shape);
  if (value && typeof value === "object" && !Array.isArray(value)) {
    if (typeof value.bytes === "number") return el("span", { class: "muted" }, bytes(value.bytes));
    if (typeof value.items === "number") return el("span", { class: "muted" }, `${value.items} items`);
  }
  if (typeof value === "number") return metric(value);
  const text = typeof value === "string" ? value : JSON.stringify(value);
  return text.length > 120 ? `${text.slice(0, 120)}…` : text;
}

/** 784 numbers, or 28 lists of 28, read as a 28x28 picture even when unmarked. */
function pictureShape(value) {
  if (!Array.isArray(value)) return null;
  if (value.length === 784 && typeof value[0] === "number") return [28, 28];
  if (value.length === 28 && Array.isArray(value[0]) && value[0].length === 28) return [28, 28];
  return null;
}

/** Draws gray (or RGB/RGBA) values, in [0, 1] or [0, 255], on a canvas. */
function picture(value, [height, width, channels = 1]) {
  const flat = Array.isArray(value) ? value.flat(2) : [];
  if (flat.length !== height * width * channels) return el("span", { class: "muted" }, "(not a picture)");
  const scale = Math.max(...flat) > 1 ? 1 : 255;
  const canvas = el("canvas", { width, height, class: "picture", role: "img", "aria-label": "picture" });
  const context = canvas.getContext("2d");
  const image = context.createImageData(width, height);
  for (let i = 0; i < height * width; i += 1) {
    const at = (c) => flat[i * channels + Math.min(c, channels - 1)] * scale;
    image.data.set([at(0), at(1), at(2), channels === 4 ? at(3) : 255], i * 4);
  }
  context.putImageData(image, 0, 0);
  return canvas;
}

/** A model's saved versions (one row each) with their metrics, as a table and charts. */
async function modelVersions(a, into) {
  const wanted = ["metrics", "params", "dataset", "created_at"].filter((c) => a.fields.some((f) => f.name === c));
  if (!wanted.includes("metrics")) return;
  const page = await api(`/models/${encodeURIComponent(a.id)}/rows?columns=${wanted.join(",")}&limit=100`);
  const parse = (text) => { try { return JSON.parse(text); } catch { return {}; } };
  // Each save appends one row, so row i is the model's (i + 1)-th version.
  const saved = page.rows.map((row, i) => ({ row, version: a.versions[i], metrics: parse(row.metrics) }));
  const names = [...new Set(saved.flatMap((s) => Object.keys(s.metrics)))]
    .filter((n) => saved.some((s) => typeof s.metrics[n] === "number"));
  into.replaceChildren(
    el("h2", {}, "Saved versions"),
    table([["Version", "num"], ["Saved"], ["Trained on", "wide"], ...names.map((n) => [n, "num"])],
          [...saved].reverse().map((s) => el("tr", { class: "saved-version" },
            el("td", { class: "num" }, s.version?.version ?? "—"),
            el("td", {}, when(s.row.created_at || s.version?.timestamp)),
            el("td", { class: "wide" }, (s.version && from(s.version)) || s.row.dataset || ""),
            ...names.map((n) => el("td", { class: "num" }, s.metrics[n] == null ? "" : metric(s.metrics[n])))))),
    el("div", { class: "grid" },
       ...(saved.length > 1 ? names.map((n) => chart(`versions-${n}`, `${n} by version`, "version",
         saved.filter((s) => typeof s.metrics[n] === "number")
              .map((s, i) => [s.version?.version ?? i + 1, s.metrics[n]]))) : [])));
}

// ---- uploads --------------------------------------------------------------------------

/** Drop files into raw/<folder>/; each answer says which ingestion it started, if any. */
function uploadView() {
  const folder = el("input", { id: "upload-folder", value: "uploads", "aria-label": "Folder under raw/",
                               pattern: "[A-Za-z0-9._/-]+", required: true });
  const input = el("input", { id: "upload-files", type: "file", multiple: true, "aria-label": "Files" });
  const results = el("tbody");
  const send = async (files) => {
    for (const file of files) {
      const path = `${folder.value.trim()}/${file.name}`.split("/").filter(Boolean).map(encodeURIComponent).join("/");
      const row = el("tr", { class: "upload" }, el("td", {}, file.name), el("td", { class: "num" }, bytes(file.size)),
                     el("td", { colspan: 2, class: "muted" }, "uploading…"));
      results.prepend(row);
      try {
        const done = await api(`/uploads/${path}`, { method: "PUT", file });
        const started = done.task ? link(`#/tasks/${done.task.id}`, `task ${done.task.spec.name} ${short(done.task.id)}`)
          : done.pipeline ? link(`#/pipelines/${done.pipeline.id}`, `pipeline ${done.pipeline.spec.name}`)
          : el("span", { class: "muted" }, "no ingestion (no rule matched, or it waits for more files)");
        row.replaceChildren(row.children[0], row.children[1], el("td", {}, el("code", {}, done.path)),
                            el("td", { class: "started" }, started));
      } catch (error) {
        row.replaceChildren(row.children[0], row.children[1],
                            el("td", { colspan: 2, class: "error" }, `${error.code}: ${error.message}`));
      }
    }
  };
  input.addEventListener("change", () => send([...input.files]));
  const zone = el("div", { class: "drop", id: "drop-zone" }, "Drop files here, or ", input);
  zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    send([...event.dataTransfer.files]);
  });
  show(el("h1", {}, "Upload"),
       el("p", {}, "Files land in ", el("code", {}, "raw/<folder>/"),
          " in your lake folder; an ingestion rule whose prefix holds them starts a task or pipeline."),
       el("label", { for: "upload-folder" }, "Folder under raw/ "), folder, zone,
       el("div", { class: "table-wrap" }, el("table", {},
          el("thead", {}, el("tr", {}, ["File", "Size", "Stored at", "Started"].map((h) => el("th", {}, h)))),
          results)));
}

// ---- the API reference (what /docs shows) ---------------------------------------------

/** `#/{"$ref": "#/components/schemas/X"}` -> `X`, and arrays of refs -> `[X]`. */
function schemaName(schema) {
  if (!schema) return "";
  if (schema.$ref) return schema.$ref.split("/").pop();
  if (schema.type === "array") return `[${schemaName(schema.items)}]`;
  return schema.type || "";
}

async function apiView() {
  const response = await fetch("/api/v1/openapi.json");
  const doc = await response.json();
  const byTag = new Map();
  for (const [path, item] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(item)) {
      if (!["get", "post", "put", "delete"].includes(method)) continue;
      const tag = op.tags?.[0] || "other";
      if (!byTag.has(tag)) byTag.set(tag, []);
      byTag.get(tag).push({ path, method, op });
    }
  }
  show(el("h1", {}, doc.info.title, " API ", el("span", { class: "muted" }, doc.info.version)),
       el("p", {}, doc.info.description || "",
          " Every call under /api/v1 takes ", el("code", {}, "Authorization: Bearer <key>"),
          " when the server has keys. The machine-readable document: ",
          link("/api/v1/openapi.json", "openapi.json"), "."),
       ...[...byTag].flatMap(([tag, ops]) => [
         el("h2", {}, tag),
         ...ops.map(({ path, method, op }) => el("details", { class: "card endpoint" },
           el("summary", {}, el("code", {}, `${method.toUpperCase()} ${path}`), " ", op.summary || ""),
           op.description && op.description !== op.summary ? el("p", {}, op.description) : "",
           op.parameters?.length ? table([["Parameter"], ["In"], ["Description"]],
             op.parameters.map((p) => el("tr", {}, el("td", {}, el("code", {}, p.name), p.required ? " *" : ""),
                                         el("td", {}, p.in), el("td", {}, p.description || "")))) : "",
           op.requestBody ? el("p", {}, "Body: ",
             el("code", {}, schemaName(Object.values(op.requestBody.content || {})[0]?.schema))) : "",
           table([["Status"], ["Meaning"], ["Body"]],
             Object.entries(op.responses || {}).map(([status, r]) => el("tr", {}, el("td", {}, status),
               el("td", {}, r.description || ""),
               el("td", {}, el("code", {}, schemaName(Object.values(r.content || {})[0]?.schema)))))))),
       ]));
}

// ---- routing --------------------------------------------------------------------------

function go(section, params = {}) {
  const query = new URLSearchParams(Object.entries(params).filter(([, v]) => v)).toString();
  location.hash = `#/${section}${query ? `?${query}` : ""}`;
}

async function route() {
  active?.stop();
  active = null;
  const [path, search = ""] = location.hash.replace(/^#\/?/, "").split("?");
  const [first, id] = path.split("/").map(decodeURIComponent);
  const section = first || "tasks";
  for (const a of document.querySelectorAll("nav a")) {
    if (a.dataset.section === section) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  document.getElementById("sign-out").hidden = !sessionStorage.getItem(KEY);
  await keyCookie(sessionStorage.getItem(KEY));
  try {
    if (section === "tasks") await (id ? taskView(id) : tasksView(new URLSearchParams(search)));
    else if (section === "pipelines") await (id ? pipelineView(id) : pipelinesView());
    else if (section === "api") await apiView();
    else if (section === "upload") uploadView();
    else if (section === "datasets" || section === "models") await (id ? artifactView(section, id) : artifactsView(section));
    else show(el("h1", {}, "Not found"), el("p", {}, link("#/tasks", "Back to the tasks")));
  } catch (error) {
    failure(error);
  }
}

window.addEventListener("hashchange", route);
route();
