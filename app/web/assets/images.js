// Images (#images, #images/<id>): the images VMs start from, and a custom image's build log
// (its tail, followed live while the build runs: build-log?follow=true streams text).
"use strict";

(() => {
  const {el, api, listPage, go, when, readText} = RDS;

  function row(image) {
    return el("tr", {},
      el("th", {scope: "row"}, el("a", {href: `#images/${image.id}`, text: image.id})),
      el("td", {}, el("span", {class: `state state-${image.state}`, text: image.state})),
      el("td", {text: image.isDefault ? "yes" : ""}),
      el("td", {text: image.builtIn ? "built in" : image.base || "—"}),
      el("td", {text: image.sizeMb === null || image.sizeMb === undefined ? "—"
        : `${image.sizeMb} MiB`}),
      el("td", {text: when(image.createdAt)}),
      el("td", {text: image.description || ""}));
  }

  function renderList(main) {
    return listPage(main, {
      title: "Images", caption: "Images VMs start from",
      columns: () => ["Image", "State", "Default", "Base", "Size", "Created", "Description"],
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
