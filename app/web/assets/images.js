// Images (#images, #images/<id>): the images VMs start from, and a custom image's build log
// (its tail, followed live while the build runs: build-log?follow=true streams text).
"use strict";

(() => {
  const {el, api, act, listPage, go, when, readText} = RDS;

  /** Set default (a READY image that is not) and Delete (a custom image that is not the
   * default); the server has the last word (409: in use, being built, ...). */
  function actions(image, refresh) {
    const path = `/v1/images/${encodeURIComponent(image.id)}`;
    const makeDefault = async () => {
      await act(`Making ${image.id} the default image`, () =>
        api(`${path}/set-default`, {method: "POST"}));
      refresh();
    };
    const remove = async () => {
      if (!window.confirm(`Delete image ${image.id} with its memory snapshots?`)) return;
      await act(`Deleting image ${image.id}`, () => api(path, {method: "DELETE"}));
      refresh();
    };
    return [
      image.state === "READY" && !image.isDefault ? el("button", {
        type: "button", text: "Set default", "aria-label": `Make ${image.id} the default image`,
        onclick: makeDefault}) : null,
      !image.builtIn && !image.isDefault ? el("button", {
        type: "button", class: "danger", text: "Delete", "aria-label": `Delete image ${image.id}`,
        onclick: remove}) : null];
  }

  function row(image, refresh) {
    return el("tr", {"data-image": image.id},
      el("th", {scope: "row"}, el("a", {href: `#images/${image.id}`, text: image.id})),
      el("td", {}, el("span", {class: `state state-${image.state}`, text: image.state})),
      el("td", {text: image.isDefault ? "yes" : ""}),
      el("td", {text: image.builtIn ? "built in" : image.base || "—"}),
      el("td", {text: image.sizeMb === null || image.sizeMb === undefined ? "—"
        : `${image.sizeMb} MiB`}),
      el("td", {text: when(image.createdAt)}),
      el("td", {text: image.description || ""}),
      el("td", {class: "actions"}, ...actions(image, refresh)));
  }

  function renderList(main) {
    return listPage(main, {
      title: "Images", caption: "Images VMs start from",
      columns: () => ["Image", "State", "Default", "Base", "Size", "Created", "Description",
                      "Actions"],
      load: () => api("/v1/images"), row, empty: "No images.", events: "image."});
  }

  function renderImage(main, id) {
    const log = el("pre", {class: "output", id: "build-log", role: "log", "aria-live": "polite",
                           "aria-label": "Build log", tabIndex: 0});
    const note = el("p", {class: "muted"});
    const aborter = new AbortController();
    main.append(el("p", {}, el("a", {href: "#images", text: "← All images"})),
      el("h2", {text: `Image ${id}`}), note, el("h3", {text: "Build log"}), log);
    api(`/v1/images/${encodeURIComponent(id)}`).then(async (image) => {
      note.textContent = `${image.state}${image.reason ? `: ${image.reason}` : ""} · built ` +
        `${when(image.buildFinishedAt || image.buildStartedAt)}`;
      if (image.builtIn) {
        log.textContent = "A built-in image has no build log.";
        return;
      }
      if (image.state !== "BUILDING") {
        const tail = await api(`/v1/images/${encodeURIComponent(id)}/build-log?tail=1000`);
        log.textContent = tail.lines.join("\n") || "(empty)";
        return;
      }
      const response = await fetch(`/v1/images/${encodeURIComponent(id)}/build-log` +
        "?follow=true&tail=1000", {headers: {Accept: "text/plain"}, signal: aborter.signal});
      if (!response.ok) throw new RDS.ApiError(response.status, response.statusText);
      await readText(response, (text) => log.append(text));
      go(`images/${id}`);  // the build ended: show the final state
    }).catch((error) => {
      if (error.name !== "AbortError") main.append(el("p", {class: "error", text: error.message}));
    });
    return () => aborter.abort();
  }

  RDS.section({id: "images", title: "Images", render: (main, id) => (id ? renderImage(main, id)
    : renderList(main))});
})();
