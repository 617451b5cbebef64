// Webhooks: the list with a create form that shows the new signing secret once, enable /
// disable and delete (#webhooks); one webhook's deliveries with Redeliver (#webhooks/<id>).
// /v1/admin/webhooks (admin only).
"use strict";

(() => {
  const {el, api, act, listPage, field, checkboxes, secretBox, go, when, until,
         EVENT_TYPES} = RDS;
  const POLL_MS = 2000;  // deliveries change without events: poll while some are under way

  function typesText(hook) {
    return hook.eventTypes.length ? hook.eventTypes.join(", ") : "every type";
  }

  /** Enable/Disable and Delete for a webhook; `after(deleted)` runs once it is done. */
  function hookButtons(hook, after) {
    const toggle = async () => {
      const doing = hook.enabled ? "Disabling" : "Enabling";
      await act(`${doing} webhook ${hook.name}`, () => api(`/v1/admin/webhooks/${hook.id}`, {
        method: "PATCH", body: {enabled: !hook.enabled}}));
      after(false);
    };
    const remove = async () => {
      if (!window.confirm(`Delete webhook ${hook.name} and its deliveries?`)) return;
      const done = await act(`Deleting webhook ${hook.name}`, () =>
        api(`/v1/admin/webhooks/${hook.id}`, {method: "DELETE"}).then(() => true));
      if (done) after(true);
    };
    const verb = hook.enabled ? "Disable" : "Enable";
    return [
      el("button", {type: "button", text: verb, "aria-label": `${verb} webhook ${hook.name}`,
                    onclick: toggle}),
      el("button", {type: "button", class: "danger", text: "Delete",
                    "aria-label": `Delete webhook ${hook.name}`, onclick: remove}),
    ];
  }

  // -- the list -----------------------------------------------------------------------------

  function createForm(refresh) {
    const name = el("input", {type: "text", required: true, maxLength: 100,
                              autocomplete: "off", placeholder: "ci-notifier"});
    const url = el("input", {type: "url", required: true, autocomplete: "off"});
    const enabled = el("input", {type: "checkbox", id: "hook-enabled", defaultChecked: true});
    const types = checkboxes("Event types", "hook-type", EVENT_TYPES, [],
                             "none ticked: every type");
    const secret = secretBox("hook-secret");
    const submit = el("button", {type: "submit", text: "Create webhook"});
    const urlField = field("hook-url", "URL", url, "an http(s) URL, not in the guests' network");
    urlField.classList.add("grow");
    const form = el("form", {class: "create", "aria-labelledby": "hook-create-title"},
      el("h3", {id: "hook-create-title", text: "Create a webhook"}),
      el("div", {class: "fields"},
        field("hook-name", "Name", name),
        urlField,
        el("div", {class: "field check"}, enabled,
           el("label", {htmlFor: "hook-enabled", text: "Enabled"}))),
      types.node, submit, secret.node);
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const body = {name: name.value.trim(), url: url.value.trim(),
                    eventTypes: types.checked(), enabled: enabled.checked};
      submit.disabled = true;
      const hook = await act(`Creating webhook ${body.name}`, () =>
        api("/v1/admin/webhooks", {method: "POST", body}));
      submit.disabled = false;
      if (!hook) return;
      form.reset();
      secret.show(`Signing secret of webhook ${hook.name}`, hook.secret);
      refresh();
    });
    return form;
  }

  function hookRow(hook, refresh) {
    return el("tr", {"data-webhook": hook.id},
      el("th", {scope: "row"}, el("a", {href: `#webhooks/${hook.id}`, text: hook.name})),
      el("td", {}, el("code", {text: hook.url})),
      el("td", {text: hook.enabled ? "yes" : "no"}),
      el("td", {text: typesText(hook)}),
      el("td", {text: when(hook.createdAt)}),
      el("td", {class: "actions"},
        el("a", {href: `#webhooks/${hook.id}`, text: "Deliveries",
                 "aria-label": `Deliveries of webhook ${hook.name}`}), " ",
        hookButtons(hook, refresh)));
  }

  function renderList(main) {
    return listPage(main, {
      title: "Webhooks", caption: "Webhooks: events POSTed to a URL, signed (X-RDS-Signature)",
      columns: () => ["Name", "URL", "Enabled", "Event types", "Created", "Actions"],
      load: () => api("/v1/admin/webhooks"), row: hookRow, empty: "No webhooks yet.",
      events: "webhook.", before: createForm});
  }

  // -- one webhook and its deliveries -------------------------------------------------------

  function deliveryRow(hookId, delivery, refresh) {
    const redeliver = async () => {
      await act(`Redelivering ${delivery.eventType}`, () => api(
        `/v1/admin/webhooks/${hookId}/deliveries/${delivery.id}/redeliver`, {method: "POST"}));
      refresh();
    };
    return el("tr", {"data-delivery": delivery.id},
      el("th", {scope: "row", text: delivery.eventType}),
      el("td", {}, el("span", {class: `state delivery-${delivery.state}`,
                               text: delivery.state})),
      el("td", {text: delivery.attempts}),
      el("td", {class: "status-code", text: delivery.lastStatusCode ?? "—"}),
      el("td", {text: delivery.lastError || "—"}),
      el("td", {text: when(delivery.lastAttemptAt)}),
      el("td", {}, delivery.nextAttemptAt
        ? el("time", {dateTime: delivery.nextAttemptAt, title: when(delivery.nextAttemptAt),
                      text: until(delivery.nextAttemptAt)}) : "—"),
      el("td", {class: "actions"}, el("button", {
        type: "button", text: "Redeliver", disabled: delivery.state === "delivering",
        "aria-label": `Redeliver ${delivery.eventType} ${delivery.id}`, onclick: redeliver})));
  }

  function renderOne(main, hookId) {
    const about = el("div", {class: "about"});
    const showHook = async () => {
      try {
        const hook = await api(`/v1/admin/webhooks/${hookId}`);
        about.replaceChildren(
          el("h3", {text: `Webhook ${hook.name}`}),
          el("dl", {class: "details"},
            [["ID", hook.id], ["URL", hook.url], ["Enabled", hook.enabled ? "yes" : "no"],
             ["Event types", typesText(hook)], ["Created", `${when(hook.createdAt)} by `
              + `${hook.createdBy}`], ["Changed", when(hook.updatedAt)]].map(([term, value]) =>
              [el("dt", {text: term}), el("dd", {text: value})])),
          el("div", {class: "toolbar"}, hookButtons(hook, (deleted) => {
            if (deleted) go("webhooks");
            else showHook();
          })));
      } catch (error) {
        about.replaceChildren(el("p", {class: "error", text: error.message}));
      }
    };
    showHook();
    let underWay = false;
    let refreshList = null;
    const timer = setInterval(() => { if (underWay && refreshList) refreshList(); }, POLL_MS);
    const leave = listPage(main, {
      title: "Webhook deliveries", caption: "Its deliveries, newest first",
      columns: () => ["Event", "State", "Attempts", "Last status", "Last error",
                      "Last attempt", "Next attempt", "Actions"],
      load: async () => {
        const deliveries = await api(`/v1/admin/webhooks/${hookId}/deliveries`);
        underWay = deliveries.some((item) => ["pending", "delivering"].includes(item.state));
        return deliveries;
      },
      row: (delivery, refresh) => deliveryRow(hookId, delivery, refresh),
      empty: "No deliveries yet.", events: "",  // every event may be delivered
      before: (refresh) => {
        refreshList = refresh;
        return el("div", {}, el("p", {}, el("a", {href: "#webhooks", text: "← All webhooks"})),
                  about);
      }});
    return () => {
      clearInterval(timer);
      leave();
    };
  }

  RDS.section({id: "webhooks", title: "Webhooks", render(main, arg) {
    return arg ? renderOne(main, arg) : renderList(main);
  }});
})();
