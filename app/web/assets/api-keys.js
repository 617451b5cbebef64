// API keys (#keys): the managed keys (never their secrets), a create form that shows the new
// key's secret once, and Revoke per live key. /v1/admin/api-keys (admin only).
"use strict";

(() => {
  const {el, api, act, listPage, field, checkboxes, secretBox, when} = RDS;

  function createForm(refresh) {
    const name = el("input", {type: "text", required: true, maxLength: 64,
                              autocomplete: "off", placeholder: "ci-runner"});
    const maxVms = el("input", {type: "number", min: 1, step: 1, placeholder: "no limit"});
    const expires = el("input", {type: "datetime-local"});
    const scopes = checkboxes("Scopes", "key-scope", ["vms", "admin"], ["vms"],
                              "vms: its own VMs; admin: everything, /v1/admin too");
    const secret = secretBox("key-secret");
    const submit = el("button", {type: "submit", text: "Create key"});
    const form = el("form", {class: "create", "aria-labelledby": "key-create-title"},
      el("h3", {id: "key-create-title", text: "Create an API key"}),
      el("div", {class: "fields"},
        field("key-name", "Name", name, "letters, digits, space and ._@:+-"),
        field("key-max-vms", "Max VMs", maxVms, "optional"),
        field("key-expires", "Expires", expires, "optional, your local time"),
        scopes.node),
      submit, secret.node);
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const body = {name: name.value.trim(), scopes: scopes.checked()};
      if (maxVms.value !== "") body.maxVms = Number(maxVms.value);
      if (expires.value) body.expiresAt = new Date(expires.value).toISOString();
      submit.disabled = true;
      const key = await act(`Creating API key ${body.name}`, () =>
        api("/v1/admin/api-keys", {method: "POST", body}));
      submit.disabled = false;
      if (!key) return;
      form.reset();
      secret.show(`Secret of API key ${key.name}`, key.key);
      refresh();
    });
    return form;
  }

  function row(key, refresh) {
    const revoke = async () => {
      if (!window.confirm(`Revoke API key ${key.name}? It stops working at once.`)) return;
      await act(`Revoking API key ${key.name}`, () =>
        api(`/v1/admin/api-keys/${key.id}/revoke`, {method: "POST"}));
      refresh();
    };
    const expired = key.expiresAt && new Date(key.expiresAt).getTime() <= Date.now();
    return el("tr", {"data-key": key.id, class: key.revokedAt ? "gone" : null},
      el("th", {scope: "row", text: key.name}),
      el("td", {}, el("code", {text: key.prefix})),
      el("td", {text: key.scopes.join(", ")}),
      el("td", {text: key.maxVms ?? "—"}),
      el("td", {text: when(key.createdAt)}),
      el("td", {text: key.lastUsedAt ? when(key.lastUsedAt) : "never"}),
      el("td", {text: key.expiresAt ? `${when(key.expiresAt)}${expired ? " (expired)" : ""}`
        : "never"}),
      el("td", {text: key.revokedAt ? when(key.revokedAt) : "—"}),
      el("td", {class: "actions"}, key.revokedAt ? "revoked" : el("button", {
        type: "button", class: "danger", text: "Revoke",
        "aria-label": `Revoke API key ${key.name}`, onclick: revoke})));
  }

  function render(main) {
    return listPage(main, {
      title: "API keys", caption: "Managed API keys (X-API-Key); secrets are never listed",
      columns: () => ["Name", "Prefix", "Scopes", "Max VMs", "Created", "Last used",
                      "Expires", "Revoked", "Actions"],
      load: () => api("/v1/admin/api-keys"), row, empty: "No API keys yet.",
      events: "apikey.", before: createForm});
  }

  RDS.section({id: "keys", title: "API keys", render});
})();
