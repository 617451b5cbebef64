// The live activity feed (the aside next to every section): the latest events from
// GET /v1/admin/activity, then new ones as they happen from the Server-Sent Events stream
// GET /v1/admin/events (EventSource; it resumes with Last-Event-ID by itself). Each event is
// passed on to RDS.on("event", ...) listeners (the VM list refreshes itself this way).
"use strict";

(() => {
  const {el, api, emit, on, when, EVENT_TYPES} = RDS;
  const KEEP = 50;
  let source = null;
  let lastSeq = 0;
  const feed = () => document.getElementById("activity-feed");
  const state = (text) => { document.getElementById("activity-state").textContent = text; };

  function describe(event) {
    const entity = event.entity || {};
    const payload = event.payload || {};
    const extra = payload.reason || payload.message || payload.name || "";
    return el("li", {class: `event event-${String(event.type).split(".")[0]}`},
      el("span", {class: "event-type", text: event.type}), " ",
      el("code", {class: "event-entity", text: `${entity.type || ""} ${entity.id || ""}`}),
      extra ? el("span", {class: "event-extra", text: ` ${extra}`}) : null,
      el("div", {class: "muted"},
        el("time", {dateTime: event.time, text: when(event.time)}), ` · ${event.actor}`));
  }

  function add(event, live) {
    if (event.seq <= lastSeq) return;  // the list and the stream may overlap at the start
    lastSeq = event.seq;
    const list = feed();
    list.prepend(describe(event));
    while (list.children.length > KEEP) list.lastElementChild.remove();
    if (live) emit("event", event);
  }

  function listen() {
    source = new EventSource(`/v1/admin/events?after=${lastSeq}`);
    source.onopen = () => state("(live)");
    source.onmessage = null;
    source.onerror = async () => {
      state("(reconnecting)");
      try {
        await api("/auth/me");  // still logged in: EventSource retries by itself
      } catch (_error) {
        stop();
      }
    };
    // SSE frames are named after the event type; listen to each known family's types.
    for (const type of EVENT_TYPES) {
      source.addEventListener(type, (message) => add(JSON.parse(message.data), true));
    }
  }

  async function start() {
    stop();
    lastSeq = 0;
    feed().replaceChildren();
    state("(loading)");
    try {
      const events = await api(`/v1/admin/activity?limit=${KEEP}`);
      for (const event of events.slice().reverse()) add(event, false);
    } catch (error) {
      state(`(${error.message})`);
    }
    listen();
  }

  function stop() {
    if (source) source.close();
    source = null;
    state("");
  }

  on("login", start);
  on("logout", stop);
})();
