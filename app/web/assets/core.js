// run-dat-sheesh admin console: the core. Plain browser JavaScript, no framework, no build.
//
// Adding a section (API keys, webhooks, ...): write assets/<name>.js calling
//
//   RDS.section({id: "keys", title: "API keys", render(main, arg) { ... }});
//
// and add `<script defer src="assets/<name>.js"></script>` to index.html. The section gets a
// nav entry and the address #keys (#keys/<arg> passes arg, e.g. an id, to render). render()
// fills `main` with nodes built by RDS.el (text goes in as textContent: API data is never
// parsed as HTML), calls the API with RDS.api, and may return a function that runs when the
// user leaves the section (close streams, stop timers). RDS.listPage builds the usual list
// page (table, Refresh, live refresh by event type; see snapshots.js), and RDS.on("event", fn)
// hears the live activity feed's events (see activity.js).
"use strict";

const RDS = (() => {
  const sections = [];
  const listeners = {};
  let leave = null;
  let loggedIn = false;
  const $ = (id) => document.getElementById(id);

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  /** An element: attrs are properties (class, text, on<event> functions, hidden, ...);
   * children are nodes or strings (strings become text nodes, so they are never parsed). */
  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs)) {
      if (value === undefined || value === null || value === false) continue;
      if (name === "text") node.textContent = String(value);
      else if (name === "class") node.className = value;
      else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else if (name in node && !name.includes("-")) node[name] = value;
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  async function errorMessage(response) {
    try {
      const body = await response.json();
      if (body && typeof body.message === "string") return body.message;
    } catch (_ignored) { /* not JSON */ }
    return `${response.status} ${response.statusText}`;
  }

  /** Call the API with the session cookie. State-changing calls carry X-Requested-With (the
   * CSRF rule of app/api/auth.py). Returns the parsed JSON (null for 204), or with
   * `stream: true` the Response itself; throws ApiError with the answer's message. */
  async function api(path, {method = "GET", body, accept, stream = false} = {}) {
    const headers = {Accept: accept || "application/json"};
    if (method !== "GET" && method !== "HEAD") headers["X-Requested-With"] = "rds-console";
    const init = {method, headers, credentials: "same-origin", cache: "no-store"};
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    if (response.status === 401 && loggedIn && !path.startsWith("/auth/")) {
      showLogin("Your session has ended: log in again.");
    }
    if (!response.ok) throw new ApiError(response.status, await errorMessage(response));
    if (stream) return response;
    if (response.status === 204) return null;
    const type = response.headers.get("Content-Type") || "";
    return type.includes("json") ? response.json() : response.text();
  }

  /** Feed a streamed response's text to onText as it arrives. */
  async function readText(response, onText) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      onText(decoder.decode(value, {stream: true}));
    }
    const rest = decoder.decode();
    if (rest) onText(rest);
  }

  /** Feed each complete line of a streamed response to onLine (ndjson). */
  async function readLines(response, onLine) {
    let buffer = "";
    await readText(response, (text) => {
      buffer += text;
      let end;
      while ((end = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, end);
        buffer = buffer.slice(end + 1);
        if (line.trim()) onLine(line);
      }
    });
    if (buffer.trim()) onLine(buffer);
  }

  function status(text, isError = false) {
    const node = $("status");
    node.textContent = text;
    node.classList.toggle("error", isError);
  }

  /** Run an action, saying in the status line what happens and how it ended. */
  async function act(doing, action, done) {
    status(`${doing}…`);
    try {
      const result = await action();
      status(done || `${doing}: done`);
      return result;
    } catch (error) {
      status(`${doing} failed: ${error.message}`, true);
      return undefined;
    }
  }

  function on(name, fn) {
    (listeners[name] = listeners[name] || []).push(fn);
  }

  function emit(name, value) {
    for (const fn of listeners[name] || []) {
      try {
        fn(value);
      } catch (error) {
        console.error(error);
      }
    }
  }

  let shownList = null;  // {events, refresh} of the list page on screen
  on("event", (event) => {
    if (shownList && String(event.type).startsWith(shownList.events)) shownList.refresh();
  });

  /** A list page: a heading, `before` (e.g. a create form), a Refresh button and a table with
   * one `row(item, refresh)` per item of `await load()`; `columns(items)` names the header
   * cells. Live events whose type starts with `events` (e.g. "vm.") refresh it. Returns the
   * cleanup for render() to return; `refresh` is handed to `before`. */
  function listPage(main, {title, caption, columns, load, row, empty, events, before}) {
    const head = el("thead");
    const body = el("tbody");
    const none = el("p", {class: "muted", text: empty, hidden: true});
    let pending = null;
    function refresh() {
      pending = pending || load().then((items) => {
        head.replaceChildren(el("tr", {}, columns(items).map((text) =>
          el("th", {scope: "col", text}))));
        body.replaceChildren(...items.map((item) => row(item, refresh)));
        none.hidden = items.length > 0;
      }).catch((error) => status(`Listing ${title} failed: ${error.message}`, true))
        .finally(() => { pending = null; });
      return pending;
    }
    main.append(el("h2", {text: title}), before ? before(refresh) : null,
      el("div", {class: "toolbar"},
         el("button", {type: "button", text: "Refresh", onclick: refresh})),
      el("table", {}, el("caption", {text: caption}), head, body), none);
    const shown = {events, refresh};
    shownList = shown;
    refresh();
    return () => { if (shownList === shown) shownList = null; };
  }

  /** A labelled form field: the label, the input (given the id) and an optional hint. */
  function field(id, label, input, hint) {
    input.id = id;
    return el("div", {class: "field"}, el("label", {htmlFor: id, text: label}), input,
      hint ? el("small", {class: "muted", text: hint}) : null);
  }

  /** A fieldset of checkboxes, one per value (ids `<prefix>-<value>`), `ticked` ones ticked
   * (again when the form is reset); `checked()` lists the ticked values in order. */
  function checkboxes(legend, prefix, values, ticked = [], hint = "") {
    const boxes = values.map((value) => el("input", {
      type: "checkbox", id: `${prefix}-${value.replace(/\W/g, "-")}`, value,
      defaultChecked: ticked.includes(value)}));
    const set = el("fieldset", {class: "checks"}, el("legend", {text: legend}),
      boxes.map((box) => el("span", {class: "check"}, box,
                           el("label", {htmlFor: box.id, text: box.value}))),
      hint ? el("small", {class: "muted", text: hint}) : null);
    return {node: set,
            checked: () => boxes.filter((box) => box.checked).map((box) => box.value)};
  }

  /** A secret shown once (a new API key, a webhook's signing secret): hidden until `show`,
   * then a labelled read-only field, a Copy button, and a live region announcing it. */
  function secretBox(id) {
    const input = el("input", {type: "text", id, readOnly: true, class: "secret-value",
                               autocomplete: "off", spellcheck: false});
    const label = el("label", {htmlFor: id});
    const said = el("p", {class: "secret-said", role: "status", "aria-live": "polite"});
    const copy = el("button", {type: "button", text: "Copy", "aria-controls": id,
      onclick: async () => {
        input.select();
        try {
          await navigator.clipboard.writeText(input.value);
          said.textContent = "Copied to the clipboard.";
        } catch (_error) {
          said.textContent = "Selected: press Ctrl+C (⌘C) to copy it.";
        }
      }});
    const node = el("div", {class: "secret", hidden: true}, label,
      el("div", {class: "secret-row"}, input, copy),
      el("p", {class: "muted", text: "Copy it now and keep it safe: only a hash is kept, "
                                     + "it is never shown again."}), said);
    return {node, show(what, value) {
      label.textContent = `${what} (shown only this once)`;
      input.value = value;
      node.hidden = false;
      said.textContent = `${what} is shown below, only this once: copy it now.`;
      input.focus();
      input.select();
    }};
  }

  function section(spec) {
    sections.push(spec);
  }

  function when(iso) {
    if (!iso) return "—";
    const date = new Date(iso);
    return Number.isNaN(date.getTime()) ? String(iso) : date.toLocaleString();
  }

  function until(iso) {
    if (!iso) return "never";
    const seconds = Math.round((new Date(iso).getTime() - Date.now()) / 1000);
    if (Number.isNaN(seconds)) return String(iso);
    if (seconds <= 0) return "due";
    if (seconds < 120) return `in ${seconds} s`;
    if (seconds < 7200) return `in ${Math.round(seconds / 60)} min`;
    return `in ${Math.round(seconds / 3600)} h`;
  }

  // -- routing: #<section id>[/<arg>] ------------------------------------------------------

  function buildNav() {
    const list = $("nav");
    list.replaceChildren(...sections.filter((spec) => spec.nav !== false).map((spec) =>
      el("li", {}, el("a", {href: `#${spec.id}`, "data-section": spec.id, text: spec.title}))));
  }

  function route() {
    if (!loggedIn) return;
    const [id, ...rest] = decodeURIComponent(location.hash.slice(1)).split("/");
    const spec = sections.find((candidate) => candidate.id === id) || sections[0];
    for (const link of document.querySelectorAll("#nav a")) {
      if (link.dataset.section === spec.id) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
    if (leave) leave();
    leave = null;
    const main = $("main");
    main.replaceChildren();
    document.title = `${spec.title} · run-dat-sheesh admin`;
    const result = spec.render(main, rest.join("/") || null);
    if (typeof result === "function") leave = result;
    // A new page: keyboard and screen-reader users start at its top, not on a button that
    // is gone (the page was rebuilt).
    if (document.activeElement === document.body || !main.contains(document.activeElement)) {
      main.focus({preventScroll: true});
    }
  }

  function go(hash) {
    if (location.hash === `#${hash}`) route();
    else location.hash = hash;
  }

  // -- session ------------------------------------------------------------------------------

  function showLogin(message = "") {
    if (loggedIn) emit("logout");
    loggedIn = false;
    if (leave) leave();
    leave = null;
    $("app-view").hidden = true;
    $("who").hidden = true;
    $("login-view").hidden = false;
    $("login-error").textContent = message;
    $("login-email").focus();
  }

  function showApp(email) {
    loggedIn = true;
    $("login-view").hidden = true;
    $("who-email").textContent = email;
    $("who").hidden = false;
    $("app-view").hidden = false;
    buildNav();
    emit("login", email);
    route();
  }

  async function login(event) {
    event.preventDefault();
    const email = $("login-email").value.trim();
    const password = $("login-password").value;
    try {
      const session = await api("/auth/login", {method: "POST", body: {email, password}});
      $("login-password").value = "";
      showApp(session.email);
      $("main").focus();
    } catch (error) {
      $("login-error").textContent = error.message;
    }
  }

  async function logout() {
    try {
      await api("/auth/logout", {method: "POST"});
      showLogin("Logged out.");
    } catch (error) {
      if (loggedIn) status(`Logging out failed: ${error.message}`, true);
    }
  }

  async function start() {
    $("login-form").addEventListener("submit", login);
    $("logout").addEventListener("click", logout);
    window.addEventListener("hashchange", route);
    try {
      const session = await api("/auth/me");
      showApp(session.email);
    } catch (_error) {
      showLogin();
    }
  }

  document.addEventListener("DOMContentLoaded", start);  // after every deferred section file

  // The event types of app/services/events.py EVENT_TYPES (the feed, webhooks' filters).
  const EVENT_TYPES = ["vm.created", "vm.started", "vm.stopped", "vm.deleted", "vm.expired",
                       "vm.failed", "snapshot.created", "snapshot.deleted", "image.ready",
                       "image.failed", "apikey.created", "apikey.revoked"];

  return {el, api, act, status, readText, readLines, section, listPage, field, checkboxes,
          secretBox, on, emit, go, when, until, ApiError, EVENT_TYPES};
})();
