// Orchestrion's run viewer: runs, templates (a form from each one's input schema), a run's task graph
// drawn as SVG and coloured live from its event stream, and a panel per task.
// Plain ES2020, no library. Everything the server sends is put in the page as text (textContent,
// createElement), never as HTML: task outputs are whatever a model wrote.
"use strict";

(() => {
  const TOKEN_KEY = "orchestrion.token";
  const SVG_NS = "http://www.w3.org/2000/svg";
  const TERMINAL = new Set(["succeeded", "failed", "cancelled", "interrupted"]);
  const RUNS_EVERY_MS = 3000;
  const NODE_W = 210;
  const NODE_H = 60;
  const GAP_X = 28;
  const GAP_Y = 46;
  const VIRTUAL_W = 12; // the width a long edge takes in a layer it passes through
  const MARGIN = 16;
  // a task's status in GET /runs/{id} (stored or live) -> the node's state
  const STATUS_STATE = {
    succeeded: "done", running: "running", retrying: "retrying", failed: "failed",
    skipped: "skipped", cancelled: "skipped", pending: "pending",
  };

  const $ = (id) => document.getElementById(id);
  const OMIT = Symbol("omit");

  // -- small DOM helpers: text only -----------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    setAttrs(node, attrs);
    for (const child of children) {
      if (child !== null && child !== undefined) node.append(child); // a string becomes a text node
    }
    return node;
  }

  function svg(tag, attrs) {
    const node = document.createElementNS(SVG_NS, tag);
    setAttrs(node, attrs);
    return node;
  }

  function setAttrs(node, attrs) {
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "text") node.textContent = String(value);
      else if (key === "class") node.setAttribute("class", value);
      else if (key.startsWith("on") && typeof value === "function") node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
  }

  function clip(text, max) {
    const value = String(text ?? "");
    return value.length > max ? `${value.slice(0, max - 1)}…` : value;
  }

  function formatCost(cost) {
    if (typeof cost !== "number" || !Number.isFinite(cost)) return "–";
    return `$${cost.toFixed(cost >= 1 ? 2 : 4)}`;
  }

  function formatCount(value) {
    return typeof value === "number" && Number.isFinite(value) ? value.toLocaleString("en-US") : "–";
  }

  function formatTime(seconds) {
    if (typeof seconds !== "number") return "";
    const date = new Date(seconds * 1000);
    const today = new Date();
    return date.toDateString() === today.toDateString()
      ? date.toLocaleTimeString([], { hour12: false })
      : date.toLocaleString([], { hour12: false });
  }

  function asText(value) {
    if (value === null || value === undefined) return "";
    return typeof value === "string" ? value : JSON.stringify(value, null, 2);
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  const enc = encodeURIComponent;

  // -- the API: a bearer token from sessionStorage on every request ---------------------------------

  class ApiError extends Error {
    constructor(status, body, fallback) {
      const error = body && typeof body === "object" && body.error && typeof body.error === "object" ? body.error : {};
      super(typeof error.message === "string" ? error.message : fallback);
      this.status = status;
      this.kind = error.type;
      this.problems = Array.isArray(error.problems) ? error.problems : [];
    }
  }

  function readToken() {
    try {
      return sessionStorage.getItem(TOKEN_KEY) || "";
    } catch {
      return "";
    }
  }

  function writeToken(token) {
    try {
      if (token) sessionStorage.setItem(TOKEN_KEY, token);
      else sessionStorage.removeItem(TOKEN_KEY);
    } catch {
      // storage refused (private mode): the token lasts until the page is reloaded
    }
    memoryToken = token;
  }

  let memoryToken = "";

  function authHeaders(extra) {
    const headers = new Headers(extra || {});
    const token = readToken() || memoryToken;
    if (token) headers.set("Authorization", `Bearer ${token}`);
    return headers;
  }

  async function api(path, options = {}) {
    const init = { method: options.method || "GET", headers: authHeaders(options.headers), signal: options.signal };
    if (options.json !== undefined) {
      init.headers.set("Content-Type", "application/json");
      init.body = JSON.stringify(options.json);
    }
    const response = await fetch(path, init);
    let body = null;
    const type = response.headers.get("Content-Type") || "";
    if (type.includes("json")) {
      try {
        body = await response.json();
      } catch {
        body = null;
      }
    }
    if (response.status === 401) {
      const error = new ApiError(401, body, "unauthorized");
      unauthorized(error.message);
      throw error;
    }
    if (!response.ok) throw new ApiError(response.status, body, `${response.status} ${response.statusText}`);
    authorized();
    return body;
  }

  let needsToken = false;

  function unauthorized(message) {
    needsToken = true;
    const banner = $("auth-message");
    banner.textContent = `Unauthorized: ${message || "this server needs a token"}. Enter the API token above.`;
    banner.hidden = false;
  }

  function authorized() {
    if (!needsToken) return;
    needsToken = false;
    $("auth-message").hidden = true;
  }

  function report(error) {
    if (error instanceof ApiError && error.status === 401) return; // the banner says so already
    if (error && error.name === "AbortError") return;
    const banner = $("app-error");
    banner.textContent = error instanceof Error ? error.message : String(error);
    banner.hidden = false;
    console.error(error);
  }

  // -- templates and the form built from an input schema --------------------------------------------

  let templates = [];
  let formReaders = [];

  async function loadTemplates() {
    const select = $("template-select");
    const body = await api("/templates");
    templates = Array.isArray(body.templates) ? body.templates : [];
    const previous = select.value;
    select.replaceChildren();
    for (const template of templates) {
      const label = template.error ? `${template.name} (broken)` : template.name;
      select.append(el("option", { value: template.name, text: label, disabled: Boolean(template.error) }));
    }
    const usable = templates.filter((template) => !template.error);
    if (usable.some((template) => template.name === previous)) select.value = previous;
    else if (usable.length) select.value = usable[0].name;
    buildForm();
  }

  function selectedTemplate() {
    return templates.find((template) => template.name === $("template-select").value) || null;
  }

  function buildForm() {
    const template = selectedTemplate();
    const fields = $("template-fields");
    fields.replaceChildren();
    formReaders = [];
    hideFormError();
    $("template-description").textContent = template ? template.description || "" : "No templates.";
    $("template-submit").disabled = !template;
    if (!template) return;
    const schema = template.inputs || {};
    const required = new Set(Array.isArray(schema.required) ? schema.required : []);
    const properties = schema.properties && typeof schema.properties === "object" ? schema.properties : {};
    const names = Object.keys(properties).sort((a, b) => Number(required.has(b)) - Number(required.has(a)));
    for (const name of names) {
      const field = fieldFor(name, properties[name] || {}, required.has(name));
      fields.append(field.node);
      formReaders.push(field);
    }
    if (!names.length) fields.append(el("p", { class: "muted small", text: "This template takes no inputs." }));
  }

  function typeOf(schema) {
    if (Array.isArray(schema.type)) return schema.type.find((type) => type !== "null") || "string";
    if (schema.type) return schema.type;
    if ("default" in schema && schema.default !== null) {
      const value = schema.default;
      if (typeof value === "boolean") return "boolean";
      if (typeof value === "number") return "number";
      if (typeof value === "string") return "string";
      return "json";
    }
    return "string";
  }

  function fieldFor(name, schema, required) {
    const id = `input-${name}`;
    const testid = `input-${name}`;
    const type = typeOf(schema);
    const hasDefault = "default" in schema;
    let input;
    let read;
    if (Array.isArray(schema.enum) && schema.enum.length) {
      input = el("select", { id, name, "data-testid": testid });
      if (!hasDefault) input.append(el("option", { value: "", text: required ? "— choose —" : "(not set)" }));
      schema.enum.forEach((choice, index) => {
        input.append(el("option", { value: String(index), text: typeof choice === "string" ? choice : JSON.stringify(choice) }));
      });
      if (hasDefault) {
        const index = schema.enum.findIndex((choice) => JSON.stringify(choice) === JSON.stringify(schema.default));
        if (index >= 0) input.value = String(index);
      }
      read = () => (input.value === "" ? OMIT : schema.enum[Number(input.value)]);
    } else if (type === "boolean") {
      input = el("input", { id, name, type: "checkbox", "data-testid": testid });
      input.checked = schema.default === true;
      read = () => input.checked;
    } else if (type === "number" || type === "integer") {
      input = el("input", {
        id, name, type: "number", "data-testid": testid, step: type === "integer" ? "1" : "any",
        min: schema.minimum, max: schema.maximum,
      });
      if (hasDefault && typeof schema.default === "number") input.value = String(schema.default);
      read = () => {
        const raw = input.value.trim();
        if (raw === "") return OMIT;
        const number = Number(raw);
        return Number.isFinite(number) ? number : raw; // the server says what is wrong with it
      };
    } else if (type === "string") {
      const text = hasDefault ? String(schema.default ?? "") : "";
      const long = (schema.maxLength === undefined || schema.maxLength > 200) && (required || text.includes("\n"));
      input = long
        ? el("textarea", { id, name, rows: 3, "data-testid": testid, maxlength: schema.maxLength })
        : el("input", { id, name, type: "text", "data-testid": testid, maxlength: schema.maxLength });
      input.value = text;
      read = () => (input.value === "" && !required ? OMIT : input.value);
    } else { // object, array or anything else: JSON text
      input = el("textarea", { id, name, rows: 3, class: "mono", "data-testid": testid, placeholder: "JSON" });
      if (hasDefault) input.value = JSON.stringify(schema.default, null, 2);
      read = () => {
        const raw = input.value.trim();
        if (raw === "") return OMIT;
        try {
          return JSON.parse(raw);
        } catch {
          throw new Error(`${name}: not valid JSON`);
        }
      };
    }
    if (required) input.setAttribute("aria-required", "true");
    const label = el("label", { for: id, class: "field-label" }, name,
      required ? el("span", { class: "required", title: "required", text: " *" }) : null,
      type !== "string" ? el("span", { class: "muted small", text: ` ${Array.isArray(schema.enum) ? "choice" : type}` }) : null);
    const hint = schema.description ? el("small", { class: "hint", text: schema.description }) : null;
    const node = type === "boolean" && !schema.enum
      ? el("div", { class: "field checkbox" }, el("label", { class: "field-label" }, input, ` ${name}`), hint)
      : el("div", { class: "field" }, label, input, hint);
    return { name, node, read };
  }

  function collectInputs() {
    const inputs = {};
    for (const field of formReaders) {
      const value = field.read();
      if (value !== OMIT) inputs[field.name] = value;
    }
    return inputs;
  }

  async function submitForm(event) {
    event.preventDefault();
    const template = selectedTemplate();
    if (!template) return;
    const button = $("template-submit");
    hideFormError();
    button.disabled = true;
    try {
      const inputs = collectInputs();
      const started = await api(`/template/${enc(template.name)}?wait=false`, { method: "POST", json: inputs });
      location.hash = `#run=${enc(started.run_id)}`;
      refreshRuns().catch(report);
    } catch (error) {
      showFormError(error);
    } finally {
      button.disabled = false;
    }
  }

  function showFormError(error) {
    const box = $("form-error");
    box.replaceChildren(el("strong", { text: error.status ? `${error.status}: ` : "" }),
      el("span", { class: "message", text: error.message || String(error) }));
    const problems = error.problems || [];
    if (problems.length) {
      const list = el("ul");
      for (const problem of problems) {
        const where = problem.path ? `${problem.path}: ` : "";
        const hint = problem.hint ? ` (${problem.hint})` : "";
        list.append(el("li", { text: `${where}${problem.message || ""}${hint}` }));
      }
      box.append(list);
    }
    box.hidden = false;
  }

  function hideFormError() {
    $("form-error").hidden = true;
    $("form-error").replaceChildren();
  }

  // -- the runs list ----------------------------------------------------------------------------------

  let runsShown = "";

  async function refreshRuns() {
    if (needsToken) return;
    const body = await api("/runs?limit=50");
    const runs = Array.isArray(body.runs) ? body.runs : [];
    const list = $("runs-list");
    list.dataset.loaded = "true";
    $("runs-refreshed").textContent = `· ${new Date().toLocaleTimeString([], { hour12: false })}`;
    const signature = JSON.stringify(runs) + (current ? current.id : "");
    if (signature === runsShown) return;
    runsShown = signature;
    list.replaceChildren();
    if (!runs.length) {
      list.append(el("li", { class: "muted small", "data-testid": "runs-empty", text: "No runs yet." }));
      return;
    }
    for (const run of runs) {
      const tokens = typeof run.input_tokens === "number"
        ? `${formatCount(run.input_tokens + (run.output_tokens || 0))} tok` : null;
      const meta = [formatTime(run.started_at), tokens, typeof run.cost_usd === "number" ? formatCost(run.cost_usd) : null]
        .filter(Boolean).join(" · ");
      const button = el("button", {
        type: "button", class: `run-item${current && current.id === run.run_id ? " current" : ""}`,
        "data-testid": "run-item", "data-run-id": run.run_id, title: run.error || run.run_id,
        onclick: () => { location.hash = `#run=${enc(run.run_id)}`; },
      },
      el("span", { class: "run-workflow", text: run.workflow || "?" }),
      el("span", { class: `status status-${run.status}`, text: run.status || "?" }),
      el("span", { class: "run-meta muted small", text: meta }));
      list.append(el("li", {}, button));
    }
  }

  // -- a run: its graph, its event stream, its tasks --------------------------------------------------

  let current = null;

  function newRun(id) {
    return {
      id, workflow: "", status: "pending", nodes: new Map(), order: [], edges: [], critical: new Set(),
      mermaid: "", lastSeq: 0, finished: false, totals: { in: 0, out: 0, cost: 0, wall: null },
      liveTotals: true, error: null, outputs: undefined, controller: new AbortController(), selected: null,
      haveFinal: false,
    };
  }

  function addNode(run, spec) {
    const node = {
      id: spec.id, taskId: spec.task_id || spec.id, kind: spec.kind || "task", task: spec.task || null,
      stage: spec.stage, round: spec.round, source: spec.source ?? null,
      models: Array.isArray(spec.models) ? spec.models : [], dependsOn: Array.isArray(spec.depends_on) ? spec.depends_on : [],
      state: "pending", label: "pending", model: null, attempt: null, answer: "", tokensIn: null, tokensOut: null,
      cost: null, latency: null, error: null, output: undefined, cached: false, dom: null,
    };
    run.nodes.set(node.id, node);
    run.order.push(node.id);
    return node;
  }

  async function openRun(id) {
    if (current && current.id === id) return;
    closeRun();
    const run = newRun(id);
    current = run;
    runsShown = "";
    $("empty-view").hidden = true;
    $("run-view").hidden = false;
    $("run-workflow").textContent = "…";
    $("run-id").textContent = id;
    $("run-error").hidden = true;
    $("stream-state").textContent = "";
    $("outputs-details").hidden = true;
    $("mermaid-text").textContent = "";
    $("graph-wrap").replaceChildren(el("p", { class: "muted small", text: "Loading the graph…" }));
    renderHeader(run);
    for (const item of document.querySelectorAll(".run-item")) {
      item.classList.toggle("current", item.dataset.runId === id);
    }
    if (!document.querySelector(`.run-item[data-run-id="${CSS.escape(id)}"]`)) refreshRuns().catch(report);
    try {
      const info = await api(`/runs/${enc(id)}`, { signal: run.controller.signal });
      if (current !== run) return;
      run.workflow = info.workflow || "";
      run.status = info.status || run.status;
      renderHeader(run);
      const graph = await loadGraph(run);
      if (current !== run) return;
      if (graph) {
        run.mermaid = graph.mermaid || "";
        const data = graph.graph || {};
        for (const spec of Array.isArray(data.nodes) ? data.nodes : []) addNode(run, spec);
        run.edges = (Array.isArray(data.edges) ? data.edges : []).filter(
          (edge) => Array.isArray(edge) && run.nodes.has(edge[0]) && run.nodes.has(edge[1]));
        if (!run.edges.length) {
          for (const node of run.nodes.values()) {
            for (const dep of node.dependsOn) if (run.nodes.has(dep)) run.edges.push([dep, node.id]);
          }
        }
        const path = Array.isArray(data.critical_path) ? data.critical_path : [];
        for (let i = 1; i < path.length; i += 1) run.critical.add(`${path[i - 1]}\u0000${path[i]}`);
      }
      $("mermaid-text").textContent = run.mermaid || "(no graph)";
      renderGraph(run);
    } catch (error) {
      if (current !== run || error.name === "AbortError") return;
      if (error instanceof ApiError && error.status !== 401) showRunError(run, error.message);
      else report(error);
      return;
    }
    streamEvents(run).catch((error) => {
      if (current === run) report(error);
    });
  }

  async function loadGraph(run) {
    try {
      return await api(`/runs/${enc(run.id)}/graph`, { signal: run.controller.signal });
    } catch (error) {
      // A run the server no longer holds and has no store for: its nodes appear as its events arrive.
      if (error instanceof ApiError && error.status === 404) return null;
      throw error;
    }
  }

  function closeRun() {
    if (!current) return;
    current.controller.abort();
    current = null;
    closePanel();
  }

  function showRunError(run, message) {
    if (current !== run) return;
    const box = $("run-error");
    box.textContent = message;
    box.hidden = !message;
  }

  // -- Server-Sent Events through fetch (EventSource cannot send Authorization) -----------------------

  async function streamEvents(run) {
    const { signal } = run.controller;
    let failures = 0;
    while (!signal.aborted && current === run) {
      let ended = false;
      try {
        const headers = authHeaders({ Accept: "text/event-stream" });
        if (run.lastSeq > 0) headers.set("Last-Event-ID", String(run.lastSeq));
        setStreamState(run, run.lastSeq > 0 ? "reconnected" : "connecting…");
        const response = await fetch(`/runs/${enc(run.id)}/events`, { headers, signal });
        if (response.status === 401) {
          let body = null;
          try { body = await response.json(); } catch { body = null; }
          unauthorized(new ApiError(401, body, "unauthorized").message);
          setStreamState(run, "unauthorized");
          return;
        }
        if (!response.ok || !response.body) throw new Error(`the event stream answered ${response.status}`);
        setStreamState(run, run.finished ? "replaying" : "live");
        await readSse(response.body, (type, data) => {
          failures = 0;
          onEvent(run, type, data);
        });
        ended = true;
      } catch (error) {
        if (signal.aborted || current !== run) return;
        if (error instanceof TypeError || error instanceof Error) setStreamState(run, `stream dropped (${error.message})`);
      }
      if (run.finished) {
        setStreamState(run, "ended");
        await fetchFinal(run);
        return;
      }
      failures += 1;
      const delay = Math.min(250 * 2 ** Math.min(failures, 5), 5000);
      setStreamState(run, ended ? "stream closed; reconnecting…" : "reconnecting…");
      await sleep(delay);
    }
  }

  async function readSse(body, onMessage) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let type = "";
    let data = [];
    let id = null;
    const dispatch = () => {
      if (data.length) {
        let parsed = null;
        try {
          parsed = JSON.parse(data.join("\n"));
        } catch {
          parsed = null;
        }
        if (parsed && typeof parsed === "object") {
          if (id !== null && parsed.seq === undefined && /^\d+$/.test(id)) parsed.seq = Number(id);
          onMessage(type || parsed.type || "message", parsed);
        }
      }
      type = "";
      data = [];
      id = null;
    };
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let newline = buffer.indexOf("\n");
        while (newline >= 0) {
          let line = buffer.slice(0, newline);
          buffer = buffer.slice(newline + 1);
          if (line.endsWith("\r")) line = line.slice(0, -1);
          if (line === "") dispatch();
          else if (!line.startsWith(":")) { // ": ping" is a comment
            const colon = line.indexOf(":");
            const field = colon < 0 ? line : line.slice(0, colon);
            let value = colon < 0 ? "" : line.slice(colon + 1);
            if (value.startsWith(" ")) value = value.slice(1);
            if (field === "event") type = value;
            else if (field === "data") data.push(value);
            else if (field === "id") id = value;
          }
          newline = buffer.indexOf("\n");
        }
      }
    } finally {
      reader.releaseLock();
    }
  }

  function setStreamState(run, text) {
    if (current === run) $("stream-state").textContent = `events: ${text}`;
  }

  // -- applying events ---------------------------------------------------------------------------------

  function onEvent(run, type, data) {
    if (current !== run) return;
    if (typeof data.seq === "number") {
      if (data.seq <= run.lastSeq) return; // already seen (a reconnect overlaps nothing, but be sure)
      run.lastSeq = data.seq;
    }
    if (type === "shutdown") {
      setStreamState(run, "the server is shutting down");
      return;
    }
    if (data.run_id && data.run_id !== run.id) return; // a nested run's event: its task ids are not ours
    if (type === "run_started") {
      if (!TERMINAL.has(run.status)) run.status = "running";
      renderHeader(run);
      return;
    }
    if (type === "run_finished") {
      run.finished = true;
      run.status = data.status || run.status;
      run.error = data.error || null;
      run.liveTotals = false;
      run.totals = { in: data.input_tokens, out: data.output_tokens, cost: data.cost_usd, wall: data.wall_time_s };
      renderHeader(run);
      showRunError(run, run.error ? `${run.status}: ${run.error}` : "");
      return;
    }
    if (!data.task_id) return;
    let node = run.nodes.get(data.task_id);
    if (!node) { // a task the graph did not show: draw it alone
      node = addNode(run, { id: data.task_id, kind: "task" });
      renderGraph(run);
    }
    const attemptChanged = typeof data.attempt === "number" && data.attempt !== node.attempt;
    switch (type) {
      case "task_started":
        if (attemptChanged) node.answer = "";
        node.attempt = data.attempt ?? node.attempt;
        node.model = data.model || node.model;
        setState(run, node, "running", data.model ? `running · ${data.model}` : "running");
        break;
      case "task_retrying":
        setState(run, node, "retrying", `retrying (${data.error_kind || "error"}) in ${(data.delay_s ?? 0).toFixed(1)} s`);
        node.error = data.error || node.error;
        break;
      case "task_fell_back":
        node.model = data.to_model || node.model;
        node.answer = "";
        setState(run, node, "running", `fell back to ${data.to_model}`);
        break;
      case "task_finished":
        node.model = data.model || node.model;
        node.tokensIn = data.input_tokens;
        node.tokensOut = data.output_tokens;
        node.cost = data.cost_usd;
        node.latency = data.latency_s;
        node.error = null;
        if (run.liveTotals) {
          run.totals.in += data.input_tokens || 0;
          run.totals.out += data.output_tokens || 0;
          run.totals.cost += data.cost_usd || 0;
          renderHeader(run);
        }
        setState(run, node, "done", usage(node));
        break;
      case "task_failed":
        node.error = data.error || data.error_kind || "failed";
        setState(run, node, "failed", `failed: ${data.error_kind || "error"}`);
        break;
      case "task_skipped":
        node.error = null;
        node.reason = data.reason || "";
        setState(run, node, "skipped", "skipped");
        break;
      case "token_delta":
        if (attemptChanged) {
          node.answer = "";
          node.attempt = data.attempt;
        }
        node.answer += typeof data.text === "string" ? data.text : "";
        if (node.state === "pending") setState(run, node, "running", "running");
        if (run.selected === node.id) appendAnswer(data.text);
        break;
      case "cache_hit":
        node.cached = true;
        break;
      default:
        break;
    }
    if (run.selected === node.id && type !== "token_delta") renderPanel(run);
  }

  function usage(node) {
    if (!node.models.length && !node.tokensIn && !node.tokensOut && !node.cost) return node.cached ? "done · cached" : "done";
    const parts = [];
    if (typeof node.tokensIn === "number") parts.push(`${formatCount(node.tokensIn)}→${formatCount(node.tokensOut)} tok`);
    if (typeof node.cost === "number") parts.push(formatCost(node.cost));
    if (node.cached) parts.push("cached");
    return parts.join(" · ") || "done";
  }

  function setState(run, node, state, label) {
    node.state = state;
    node.label = label || state;
    paintNode(node);
  }

  async function fetchFinal(run) {
    // The stream ends once the run's result is kept: GET /runs/{id} then gives outputs and each task's output.
    for (let attempt = 0; attempt < 4 && current === run; attempt += 1) {
      let info;
      try {
        info = await api(`/runs/${enc(run.id)}`, { signal: run.controller.signal });
      } catch (error) {
        if (error.name !== "AbortError" && current === run) report(error);
        return;
      }
      if (current !== run) return;
      const final = info && typeof info.tasks === "object" && ("outputs" in info || "totals" in info);
      if (!final) {
        await sleep(300);
        continue;
      }
      run.status = info.status || run.status;
      run.outputs = info.outputs;
      if (info.totals && typeof info.totals === "object") {
        run.totals = {
          in: info.totals.input_tokens ?? run.totals.in, out: info.totals.output_tokens ?? run.totals.out,
          cost: info.totals.cost_usd ?? run.totals.cost, wall: info.totals.wall_time_s ?? run.totals.wall,
        };
        run.liveTotals = false;
      }
      for (const [taskId, task] of Object.entries(info.tasks || {})) {
        const node = run.nodes.get(taskId);
        if (!node || !task || typeof task !== "object") continue;
        node.output = task.output;
        if (task.error) node.error = task.error;
        if (typeof task.input_tokens === "number" && node.tokensIn === null && task.status === "succeeded") {
          node.tokensIn = task.input_tokens;
          node.tokensOut = task.output_tokens;
          node.cost = task.cost_usd;
        }
        node.model = node.model || task.model || null;
        const state = STATUS_STATE[task.status];
        if (state && node.state !== state && (node.state === "pending" || node.state === "running" || node.state === "retrying")) {
          setState(run, node, state, state === "done" ? usage(node) : task.status);
        }
      }
      for (const node of run.nodes.values()) {
        if (node.state === "pending") setState(run, node, "pending", "not run");
      }
      run.haveFinal = true;
      renderHeader(run);
      if (run.outputs !== undefined && run.outputs !== null) {
        $("run-outputs").textContent = asText(run.outputs);
        $("outputs-details").hidden = false;
      }
      if (run.selected) renderPanel(run);
      refreshRuns().catch(report);
      return;
    }
  }

  // -- the header ----------------------------------------------------------------------------------

  function renderHeader(run) {
    if (current !== run) return;
    $("run-workflow").textContent = run.workflow || "…";
    const status = $("run-status");
    status.textContent = run.status;
    status.className = `status status-${run.status}`;
    status.dataset.status = run.status;
    $("total-in").textContent = formatCount(run.totals.in);
    $("total-out").textContent = formatCount(run.totals.out);
    $("total-cost").textContent = formatCost(run.totals.cost);
    $("total-wall").textContent = typeof run.totals.wall === "number" ? `${run.totals.wall.toFixed(2)} s` : "–";
  }

  // -- the graph: a layered layout drawn as SVG ----------------------------------------------------

  // A layered (Sugiyama-style) layout: a node's layer is the longest path from a root; an edge that
  // spans several layers gets a narrow virtual point in each layer between, so it bends around the
  // nodes in them instead of crossing them; a few barycentre sweeps order each layer.
  function layout(run) {
    const ids = run.order;
    const preds = new Map(ids.map((id) => [id, []]));
    const succs = new Map(ids.map((id) => [id, []]));
    for (const [from, to] of run.edges) {
      succs.get(from).push(to);
      preds.get(to).push(from);
    }
    const layer = new Map(ids.map((id) => [id, 0]));
    const waiting = new Map(ids.map((id) => [id, preds.get(id).length]));
    const queue = ids.filter((id) => waiting.get(id) === 0);
    const seen = new Set();
    while (queue.length) {
      const id = queue.shift();
      seen.add(id);
      for (const next of succs.get(id)) {
        layer.set(next, Math.max(layer.get(next), layer.get(id) + 1));
        waiting.set(next, waiting.get(next) - 1);
        if (waiting.get(next) === 0) queue.push(next);
      }
    }
    const deepest = Math.max(0, ...layer.values());
    for (const id of ids) if (!seen.has(id)) layer.set(id, deepest + 1); // a cycle, which a plan never has
    // the items to place: the nodes, and the virtual points of long edges
    const width = new Map(ids.map((id) => [id, NODE_W]));
    const up = new Map(ids.map((id) => [id, []]));
    const down = new Map(ids.map((id) => [id, []]));
    const chains = new Map(); // edge key -> [from, virtual..., to]
    for (const [from, to] of run.edges) {
      const chain = [from];
      for (let at = layer.get(from) + 1; at < layer.get(to); at += 1) {
        const point = `\u0001${from}\u0000${to}\u0001${at}`;
        layer.set(point, at);
        width.set(point, VIRTUAL_W);
        up.set(point, []);
        down.set(point, []);
        chain.push(point);
      }
      chain.push(to);
      for (let i = 1; i < chain.length; i += 1) {
        down.get(chain[i - 1]).push(chain[i]);
        up.get(chain[i]).push(chain[i - 1]);
      }
      chains.set(`${from}\u0000${to}`, chain);
    }
    const layers = [];
    const order = new Map();
    for (const item of width.keys()) {
      const at = layer.get(item);
      while (layers.length <= at) layers.push([]);
      order.set(item, layers[at].length + at * 100000);
      layers[at].push(item);
    }
    const gap = (a, b) => (width.get(a) === NODE_W && width.get(b) === NODE_W ? GAP_X : GAP_X / 2);
    const separation = (a, b) => (width.get(a) + width.get(b)) / 2 + gap(a, b); // between two centres
    const rowWidth = (row) => row.reduce((sum, item, i) => sum + width.get(item) + (i ? gap(row[i - 1], item) : 0), 0);
    const widest = Math.max(NODE_W, ...layers.map(rowWidth));
    const centre = new Map();
    const place = (row) => {
      let x = (widest - rowWidth(row)) / 2;
      row.forEach((item, i) => {
        if (i) x += gap(row[i - 1], item);
        centre.set(item, x + width.get(item) / 2);
        x += width.get(item);
      });
    };
    layers.forEach(place);
    const sweep = (row, neighbours) => {
      const key = new Map(row.map((item) => {
        const near = neighbours.get(item);
        const at = near.length ? near.reduce((sum, other) => sum + centre.get(other), 0) / near.length : centre.get(item);
        return [item, at];
      }));
      row.sort((a, b) => key.get(a) - key.get(b) || order.get(a) - order.get(b));
      place(row);
    };
    for (let pass = 0; pass < 4; pass += 1) {
      for (let i = 1; i < layers.length; i += 1) sweep(layers[i], up);
      for (let i = layers.length - 2; i >= 0; i -= 1) sweep(layers[i], down);
    }
    // x: each item moves towards the mean of its neighbours (a long edge's points weigh more, to keep it
    // straight), kept in order and apart: the mean of a packing from the left and one from the right
    const settle = (row, neighbours) => {
      const wanted = row.map((item) => {
        let sum = 0;
        let weight = 0;
        for (const other of neighbours.get(item)) {
          const w = width.get(other) === VIRTUAL_W && width.get(item) === VIRTUAL_W ? 4 : 1;
          sum += w * centre.get(other);
          weight += w;
        }
        return weight ? sum / weight : centre.get(item);
      });
      const left = wanted.slice();
      for (let i = 1; i < row.length; i += 1) left[i] = Math.max(wanted[i], left[i - 1] + separation(row[i - 1], row[i]));
      const right = wanted.slice();
      for (let i = row.length - 2; i >= 0; i -= 1) right[i] = Math.min(wanted[i], right[i + 1] - separation(row[i], row[i + 1]));
      row.forEach((item, i) => centre.set(item, (left[i] + right[i]) / 2));
    };
    for (let pass = 0; pass < 8; pass += 1) {
      for (let i = 1; i < layers.length; i += 1) settle(layers[i], up);
      for (let i = layers.length - 2; i >= 0; i -= 1) settle(layers[i], down);
    }
    let low = Infinity;
    let high = -Infinity;
    for (const [item, x] of centre) {
      low = Math.min(low, x - width.get(item) / 2);
      high = Math.max(high, x + width.get(item) / 2);
    }
    for (const [item, x] of centre) centre.set(item, x - low);
    const top = (item) => MARGIN + layer.get(item) * (NODE_H + GAP_Y);
    const positions = new Map(ids.map((id) => [id, { x: MARGIN + centre.get(id) - NODE_W / 2, y: top(id) }]));
    const routes = new Map();
    for (const [key, chain] of chains) {
      routes.set(key, chain.slice(1, -1).map((point) => ({ x: MARGIN + centre.get(point), y: top(point) })));
    }
    return {
      positions, routes,
      width: 2 * MARGIN + (high - low),
      height: 2 * MARGIN + layers.length * (NODE_H + GAP_Y) - GAP_Y,
    };
  }

  function renderGraph(run) {
    if (current !== run) return;
    const wrap = $("graph-wrap");
    if (!run.nodes.size) {
      wrap.replaceChildren(el("p", { class: "muted small", text: "No graph for this run yet: its tasks appear as they start." }));
      return;
    }
    const { positions, routes, width, height } = layout(run);
    const root = svg("svg", {
      class: "dag", width, height, viewBox: `0 0 ${width} ${height}`, role: "img",
      "aria-label": `task graph of ${run.workflow || "the run"}`, "data-testid": "dag",
    });
    const defs = svg("defs");
    for (const [id, cls] of [["arrow", "arrow"], ["arrow-critical", "arrow critical"]]) {
      const marker = svg("marker", {
        id, viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse",
      });
      marker.append(svg("path", { d: "M0,0 L10,5 L0,10 z", class: cls }));
      defs.append(marker);
    }
    root.append(defs);
    const edges = svg("g", { class: "edges" });
    const ports = edgePorts(run.edges, positions, routes);
    for (const [from, to] of run.edges) {
      const a = positions.get(from);
      const b = positions.get(to);
      const key = `${from}\u0000${to}`;
      // down from the source, straight through each virtual point's layer, into the target
      const points = [{ x: a.x + NODE_W / 2 + ports.out.get(key), y: a.y + NODE_H }];
      for (const point of routes.get(key)) points.push({ x: point.x, y: point.y }, { x: point.x, y: point.y + NODE_H });
      points.push({ x: b.x + NODE_W / 2 + ports.in.get(key), y: b.y - 2 });
      let d = `M${points[0].x},${points[0].y}`;
      for (let i = 1; i < points.length; i += 1) {
        const p = points[i - 1];
        const q = points[i];
        if (i % 2 === 0) { // through a virtual point's layer
          d += ` L${q.x},${q.y}`;
        } else {
          const bend = Math.max(18, (q.y - p.y) / 2);
          d += ` C${p.x},${p.y + bend} ${q.x},${q.y - bend} ${q.x},${q.y}`;
        }
      }
      const critical = run.critical.has(key);
      edges.append(svg("path", {
        d, class: critical ? "edge critical" : "edge", "marker-end": `url(#${critical ? "arrow-critical" : "arrow"})`,
        "data-edge": `${from}->${to}`,
      }));
    }
    root.append(edges);
    const nodes = svg("g", { class: "nodes" });
    for (const id of run.order) {
      const node = run.nodes.get(id);
      const at = positions.get(id);
      const group = svg("g", {
        class: "node", transform: `translate(${at.x},${at.y})`, tabindex: 0, role: "button",
        "data-testid": `node-${id}`, "data-node-id": id, "aria-label": `task ${id}`,
      });
      const title = svg("title", { text: [id, describe(node)].filter(Boolean).join("\n") });
      const rect = svg("rect", { width: NODE_W, height: NODE_H, rx: node.kind === "until" ? 18 : 8 });
      const name = svg("text", { x: 10, y: 19, class: "node-id", text: clip(id, 27) });
      const models = svg("text", { x: 10, y: 36, class: "node-models", text: clip(describe(node), 33) });
      const status = svg("text", { x: 10, y: 52, class: "node-status" });
      group.append(title, rect, name, models, status);
      group.addEventListener("click", () => selectTask(run, id));
      group.addEventListener("keydown", (event) => {
        if (event.key === "Enter" || event.key === " ") {
          event.preventDefault();
          selectTask(run, id);
        }
      });
      node.dom = { group, status };
      paintNode(node);
      nodes.append(group);
    }
    root.append(nodes);
    wrap.replaceChildren(root);
    if (run.selected && run.nodes.has(run.selected)) run.nodes.get(run.selected).dom.group.classList.add("selected");
  }

  // where each edge leaves its source and enters its target: spread along the box's edge, in the order
  // of the nodes at the other end, so that converging arrows do not pile up on one point
  function edgePorts(edges, positions, routes) {
    const offsets = { in: new Map(), out: new Map() };
    const spread = (groups, side) => {
      for (const list of groups.values()) {
        list.sort((a, b) => a.x - b.x);
        const step = Math.min(26, (NODE_W * 0.7) / Math.max(1, list.length));
        list.forEach((item, i) => offsets[side].set(item.key, (i - (list.length - 1) / 2) * step));
      }
    };
    const incoming = new Map();
    const outgoing = new Map();
    const centre = (id) => positions.get(id).x + NODE_W / 2;
    for (const [from, to] of edges) {
      const key = `${from}\u0000${to}`;
      const route = routes.get(key);
      if (!incoming.has(to)) incoming.set(to, []);
      if (!outgoing.has(from)) outgoing.set(from, []);
      incoming.get(to).push({ key, x: route.length ? route[route.length - 1].x : centre(from) });
      outgoing.get(from).push({ key, x: route.length ? route[0].x : centre(to) });
    }
    spread(incoming, "in");
    spread(outgoing, "out");
    return offsets;
  }

  function describe(node) {
    if (node.models.length) return node.models.join(" → ");
    if (node.kind === "until") return "until";
    if (node.kind === "call" || node.kind === "workflow") return `${node.kind} ${node.source || ""}`.trim();
    return node.kind && node.kind !== "task" ? node.kind : "";
  }

  function paintNode(node) {
    if (!node.dom) return;
    const { group, status } = node.dom;
    group.dataset.state = node.state;
    group.setAttribute("class", `node state-${node.state} kind-${node.kind}${group.classList.contains("selected") ? " selected" : ""}`);
    status.textContent = clip(node.label, 34);
  }

  // -- the task panel ------------------------------------------------------------------------------

  function selectTask(run, id) {
    if (current !== run) return;
    if (run.selected && run.nodes.has(run.selected)) {
      const previous = run.nodes.get(run.selected);
      if (previous.dom) previous.dom.group.classList.remove("selected");
    }
    run.selected = id;
    const node = run.nodes.get(id);
    if (node && node.dom) node.dom.group.classList.add("selected");
    $("task-panel").hidden = false;
    $("layout").classList.add("with-panel");
    renderPanel(run);
  }

  function renderPanel(run) {
    const node = run.nodes.get(run.selected);
    if (!node) return;
    $("task-panel").dataset.task = node.id;
    $("task-title").textContent = node.id;
    const state = $("task-state");
    state.textContent = node.state;
    state.className = `status state-${node.state}`;
    state.dataset.state = node.state;
    const meta = [];
    if (node.round) meta.push(`round ${node.round}`);
    if (node.model) meta.push(`model ${node.model}`);
    else if (node.models.length) meta.push(`models ${node.models.join(" → ")}`);
    if (node.state === "done") meta.push(usage(node));
    if (typeof node.latency === "number") meta.push(`${node.latency.toFixed(2)} s`);
    $("task-meta").textContent = meta.join(" · ");
    const labels = { prompt: "Prompt", call: "Function", workflow: "Workflow", until: "Condition", plan: "Plan request" };
    $("task-source-label").textContent = labels[node.task || node.kind] || "Source";
    $("task-prompt").textContent = node.source === null || node.source === undefined ? "—" : String(node.source);
    const answer = $("task-answer");
    answer.textContent = node.answer;
    answer.classList.toggle("placeholder", !node.answer);
    if (!node.answer) answer.dataset.placeholder = node.state === "pending" ? "not started" : "nothing streamed";
    const outputBlock = $("task-output-block");
    const hasOutput = node.output !== undefined && (node.output !== null || node.state === "done");
    outputBlock.hidden = !hasOutput;
    if (hasOutput) $("task-output").textContent = node.output === null ? "null" : asText(node.output);
    const problem = node.error || (node.state === "skipped" && node.reason ? `skipped: ${node.reason}` : "");
    $("task-error-block").hidden = !problem;
    $("task-error").textContent = problem || "";
    $("task-error").classList.toggle("error-text", Boolean(node.error));
  }

  function appendAnswer(text) {
    if (typeof text !== "string" || !text) return;
    const answer = $("task-answer");
    if (answer.classList.contains("placeholder")) {
      answer.classList.remove("placeholder");
      answer.textContent = "";
    }
    answer.append(text);
  }

  function closePanel() {
    $("task-panel").hidden = true;
    $("layout").classList.remove("with-panel");
    if (current && current.selected && current.nodes.has(current.selected)) {
      const node = current.nodes.get(current.selected);
      if (node.dom) node.dom.group.classList.remove("selected");
    }
    if (current) current.selected = null;
  }

  // -- wiring ---------------------------------------------------------------------------------------

  function runFromHash() {
    const match = /^#run=(.+)$/.exec(location.hash);
    if (!match) return null;
    try {
      return decodeURIComponent(match[1]);
    } catch {
      return null;
    }
  }

  function route() {
    const id = runFromHash();
    if (id) {
      openRun(id).catch(report);
    } else {
      closeRun();
      $("run-view").hidden = true;
      $("empty-view").hidden = false;
    }
  }

  async function loadAll() {
    $("app-error").hidden = true;
    try {
      await Promise.all([loadTemplates(), refreshRuns()]);
    } catch (error) {
      report(error);
    }
  }

  function start() {
    $("token-input").value = readToken();
    $("token-form").addEventListener("submit", (event) => {
      event.preventDefault();
      writeToken($("token-input").value.trim());
      needsToken = false;
      $("auth-message").hidden = true;
      const reopen = current ? current.id : runFromHash();
      closeRun();
      loadAll().then(() => {
        if (reopen && !needsToken) openRun(reopen).catch(report);
      });
    });
    $("token-clear").addEventListener("click", () => {
      writeToken("");
      $("token-input").value = "";
    });
    $("template-select").addEventListener("change", buildForm);
    $("template-form").addEventListener("submit", submitForm);
    $("task-close").addEventListener("click", closePanel);
    $("mermaid-copy").addEventListener("click", () => {
      const text = $("mermaid-text").textContent;
      const copied = navigator.clipboard ? navigator.clipboard.writeText(text) : Promise.reject(new Error("no clipboard"));
      copied.then(() => { $("mermaid-copy").textContent = "Copied"; }, () => {
        const range = document.createRange();
        range.selectNodeContents($("mermaid-text"));
        const selection = window.getSelection();
        selection.removeAllRanges();
        selection.addRange(range);
      });
    });
    document.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && !$("task-panel").hidden) closePanel();
    });
    window.addEventListener("hashchange", route);
    setInterval(() => {
      if (!document.hidden) refreshRuns().catch(report);
    }, RUNS_EVERY_MS);
    loadAll().then(route);
  }

  start();
})();
