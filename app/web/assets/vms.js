// VMs: the list with create / stop / start / delete (#vms), and one VM (#vms/<id>): its
// details, a command box whose output streams in (exec with Accept: application/x-ndjson),
// its console log and its exec history.
"use strict";

(() => {
  const {el, api, act, listPage, field, go, when, until, readLines} = RDS;

  function labelsText(labels) {
    return Object.entries(labels || {}).map(([key, value]) => `${key}=${value}`).join(", ");
  }

  function parseLabels(text) {
    const labels = {};
    for (const part of text.split(",").map((item) => item.trim()).filter(Boolean)) {
      const at = part.indexOf("=");
      if (at < 0) labels[part] = "";
      else labels[part.slice(0, at).trim()] = part.slice(at + 1).trim();
    }
    return labels;
  }

  function lifecycleButtons(vm, after) {
    const name = vm.name || vm.id;
    const run = (doing, method, path) => async () => {
      if (method === "DELETE" && !window.confirm(`Delete ${name}? Its disk is removed.`)) return;
      await act(`${doing} ${name}`, () => api(path, {method}));
      after(method);
    };
    return [
      el("button", {type: "button", disabled: vm.state !== "RUNNING", text: "Stop",
                    "aria-label": `Stop ${name}`,
                    onclick: run("Stopping", "POST", `/v1/vms/${vm.id}/stop`)}),
      el("button", {type: "button", disabled: vm.state !== "STOPPED", text: "Start",
                    "aria-label": `Start ${name}`,
                    onclick: run("Starting", "POST", `/v1/vms/${vm.id}/start`)}),
      el("button", {type: "button", class: "danger", text: "Delete",
                    "aria-label": `Delete ${name}`,
                    onclick: run("Deleting", "DELETE", `/v1/vms/${vm.id}`)}),
    ];
  }

  // -- the list -----------------------------------------------------------------------------

  function createForm(onCreated) {
    const image = el("select", {}, el("option", {value: "", text: "default"}));
    api("/v1/images").then((images) => {
      for (const item of images.filter((candidate) => candidate.state === "READY")) {
        image.append(el("option", {value: item.id, text: item.id}));
      }
    }).catch(() => {});
    const inputs = {
      cpu: el("input", {type: "number", min: 1, value: 1, required: true}),
      memMb: el("input", {type: "number", min: 128, step: 64, value: 256, required: true}),
      ttl: el("input", {type: "number", min: 0, placeholder: "server default"}),
      labels: el("input", {type: "text", placeholder: "team=ci, job=42"}),
      allowIps: el("input", {type: "text", placeholder: "0.0.0.0/0"}),
      internet: el("input", {type: "checkbox"}),
    };
    const submit = el("button", {type: "submit", text: "Create VM"});
    const form = el("form", {class: "create", "aria-labelledby": "create-title"},
      el("h3", {id: "create-title", text: "Create a VM"}),
      el("div", {class: "fields"},
        field("vm-cpu", "vCPUs", inputs.cpu),
        field("vm-mem", "Memory (MiB)", inputs.memMb),
        field("vm-image", "Image", image),
        field("vm-ttl", "Lifetime (s)", inputs.ttl, "0: never"),
        field("vm-labels", "Labels", inputs.labels, "key=value, comma-separated"),
        field("vm-allow", "Allowed IPs", inputs.allowIps, "CIDRs, comma-separated"),
        el("div", {class: "field check"}, inputs.internet,
           el("label", {htmlFor: "vm-internet", text: "Outbound internet"}))),
      submit);
    inputs.internet.id = "vm-internet";
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const body = {cpu: Number(inputs.cpu.value), memMb: Number(inputs.memMb.value),
                    labels: parseLabels(inputs.labels.value),
                    outboundInternet: inputs.internet.checked,
                    allowIps: inputs.allowIps.value.split(",").map((s) => s.trim())
                      .filter(Boolean)};
      if (image.value) body.imageId = image.value;
      if (inputs.ttl.value !== "") body.ttlSeconds = Number(inputs.ttl.value);
      submit.disabled = true;
      const vm = await act("Creating a VM (it boots first)", () =>
        api("/v1/vms", {method: "POST", body}));
      submit.disabled = false;
      if (vm) onCreated(vm);
    });
    return form;
  }

  function vmRow(vm, showCreator, refresh) {
    return el("tr", {"data-vm": vm.id},
      el("th", {scope: "row"}, el("a", {href: `#vms/${vm.id}`, text: vm.name || vm.id})),
      el("td", {}, el("span", {class: `state state-${vm.state}`, text: vm.state})),
      el("td", {text: vm.imageId}),
      el("td", {text: labelsText(vm.labels)}),
      el("td", {}, el("time", {dateTime: vm.expiresAt || "", title: when(vm.expiresAt),
                               text: until(vm.expiresAt)})),
      el("td", {text: when(vm.createdAt)}),
      showCreator ? el("td", {class: "wrap", text: vm.createdBy || "—"}) : null,
      el("td", {class: "actions"}, lifecycleButtons(vm, refresh)));
  }

  function renderList(main) {
    let showCreator = false;  // the column appears once VMs carry createdBy
    return listPage(main, {
      title: "Virtual machines", caption: "Virtual machines on this host",
      columns: (vms) => {
        showCreator = vms.some((vm) => "createdBy" in vm);
        return ["VM", "State", "Image", "Labels", "Expires", "Created",
                showCreator ? "Created by" : null, "Actions"].filter(Boolean);
      },
      load: () => api("/v1/vms"), row: (vm, refresh) => vmRow(vm, showCreator, refresh),
      empty: "No VMs.", events: "vm.",
      before: (refresh) => createForm((vm) => { refresh(); go(`vms/${vm.id}`); })});
  }

  // -- one VM -------------------------------------------------------------------------------

  function details(vm) {
    const rows = [
      ["ID", vm.id], ["State", vm.state], ["Image", vm.imageId],
      ["vCPUs / memory", `${vm.cpu} / ${vm.memMb} MiB`], ["Guest IP", vm.guestIp],
      ["Created", when(vm.createdAt)],
      ["Expires", vm.expiresAt ? `${until(vm.expiresAt)} (${when(vm.expiresAt)})` : "never"],
      ["Labels", labelsText(vm.labels) || "—"],
      ["Network", vm.outboundInternet ? `out to ${(vm.allowIps || []).join(", ") || "nothing"}`
        : "no outbound traffic"],
      ["Made by", vm.provisionMode],
    ];
    if ("createdBy" in vm) rows.push(["Created by", vm.createdBy || "—"]);
    return el("dl", {class: "details"},
      rows.map(([term, value]) => [el("dt", {text: term}), el("dd", {text: value})]));
  }

  function decode(line) {
    if (line.encoding !== "base64") return line.data;
    const bytes = Uint8Array.from(atob(line.data), (char) => char.charCodeAt(0));
    return new TextDecoder().decode(bytes);
  }

  function commandBox(vm, onDone) {
    const command = el("input", {type: "text", id: "cmd", required: true, autocomplete: "off",
                                 placeholder: "uname -a"});
    const timeout = el("input", {type: "number", id: "cmd-timeout", min: 1, max: 120,
                                 value: 30});
    const run = el("button", {type: "submit", text: "Run"});
    const output = el("pre", {id: "cmd-output", class: "output", role: "log",
                              "aria-live": "polite", "aria-label": "Command output"});
    const result = el("p", {id: "cmd-result", role: "status"});
    const form = el("form", {class: "command", "aria-labelledby": "cmd-title"},
      el("h3", {id: "cmd-title", text: "Run a command"}),
      el("div", {class: "fields"},
        el("div", {class: "field grow"}, el("label", {htmlFor: "cmd", text: "Command"}), command),
        el("div", {class: "field"}, el("label", {htmlFor: "cmd-timeout", text: "Timeout (s)"}),
           timeout)),
      run, output, result);
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      output.replaceChildren();
      result.textContent = "Running…";
      run.disabled = true;
      try {
        const response = await api(`/v1/vms/${vm.id}/exec`, {
          method: "POST", accept: "application/x-ndjson", stream: true,
          body: {cmd: command.value, timeoutMs: Number(timeout.value) * 1000}});
        await readLines(response, (text) => {
          const line = JSON.parse(text);
          if (line.type === "output") {
            output.append(el("span", {class: line.stream, text: decode(line)}));
          } else if (line.type === "result") {
            result.textContent = `Exit code ${line.exitCode} after ${line.durationMs} ms` +
              (line.timedOut ? " (timed out)" : "");
          } else if (line.type === "error") {
            result.textContent = `Failed: ${line.message}`;
          }
        });
      } catch (error) {
        result.textContent = `Failed: ${error.message}`;
      } finally {
        run.disabled = false;
        onDone();
      }
    });
    return form;
  }

  function panel(title, id, load) {
    const content = el("div", {id: `${id}-content`});
    const refresh = async () => {
      try {
        content.replaceChildren(await load());
      } catch (error) {
        content.replaceChildren(el("p", {class: "error", text: error.message}));
      }
    };
    refresh();
    return [el("section", {class: "panel", "aria-labelledby": `${id}-title`},
      el("div", {class: "panel-head"}, el("h3", {id: `${id}-title`, text: title}),
        el("button", {type: "button", text: "Refresh", "aria-label": `Refresh ${title}`,
                      onclick: refresh})),
      content), refresh];
  }

  async function consoleLog(vm) {
    const log = await api(`/v1/vms/${vm.id}/logs?tail=200`);
    return el("pre", {class: "output", tabIndex: 0, "aria-label": "Console log",
                      text: log.lines.join("\n") || "(empty)"});
  }

  async function execHistory(vm) {
    const entries = await api(`/v1/vms/${vm.id}/exec-logs?limit=20`);
    if (!entries.length) return el("p", {class: "muted", text: "Nothing has run yet."});
    return el("table", {},
      el("caption", {text: "Latest calls, newest first"}),
      el("thead", {}, el("tr", {}, ["When", "Type", "Command", "Exit", "ms", "By"].map(
        (text) => el("th", {scope: "col", text})))),
      el("tbody", {}, entries.map((entry) => el("tr", {},
        el("td", {text: when(entry.startedAt)}), el("td", {text: entry.type}),
        el("td", {}, el("code", {text: entry.command})),
        el("td", {text: entry.timedOut ? "timeout" : entry.exitCode}),
        el("td", {text: entry.durationMs}), el("td", {text: entry.actor})))));
  }

  function renderVm(main, id) {
    const heading = el("h2", {text: "VM"});
    main.append(el("p", {}, el("a", {href: "#vms", text: "← All VMs"})), heading);
    api(`/v1/vms/${encodeURIComponent(id)}`).then((vm) => {
      heading.textContent = `VM ${vm.name || vm.id}`;
      const reload = (method) => go(method === "DELETE" ? "vms" : `vms/${vm.id}`);
      const [historyPanel, refreshHistory] = panel("Exec history", "history",
        () => execHistory(vm));
      const [logPanel] = panel("Console log", "console", () => consoleLog(vm));
      main.append(details(vm),
        el("div", {class: "toolbar"}, lifecycleButtons(vm, reload),
          el("button", {type: "button", text: "Take snapshot", disabled:
            !["RUNNING", "STOPPED"].includes(vm.state), onclick: () => act(
              `Snapshotting ${vm.name}`, () => api(`/v1/vms/${vm.id}/snapshots`,
                {method: "POST"}))})),
        vm.state === "RUNNING" ? commandBox(vm, refreshHistory) : null,
        historyPanel, logPanel);
    }).catch((error) => {
      main.append(el("p", {class: "error", text: error.message}));
    });
  }

  RDS.section({id: "vms", title: "VMs", render: (main, id) => (id ? renderVm(main, id)
    : renderList(main))});
})();
