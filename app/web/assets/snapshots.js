// Snapshots (#snapshots): every disk snapshot, the VM it was taken from, and delete. A VM's
// page takes new ones ("Take snapshot").
"use strict";

(() => {
  const {el, api, act, listPage, when} = RDS;

  function row(snapshot, refresh) {
    const remove = async () => {
      if (!window.confirm(`Delete snapshot ${snapshot.id}?`)) return;
      await act(`Deleting snapshot ${snapshot.id}`, () =>
        api(`/v1/snapshots/${snapshot.id}`, {method: "DELETE"}));
      refresh();
    };
    return el("tr", {},
      el("th", {scope: "row"}, el("code", {text: snapshot.id})),
      el("td", {text: snapshot.kind}),
      el("td", {text: when(snapshot.createdAt)}),
      el("td", {}, snapshot.sourceVmId
        ? el("a", {href: `#vms/${snapshot.sourceVmId}`, text: snapshot.sourceVmId}) : "—"),
      el("td", {text: snapshot.imageId}),
      el("td", {text: `${snapshot.cpu} / ${snapshot.memMb} MiB`}),
      el("td", {class: "actions"}, el("button", {type: "button", class: "danger",
        text: "Delete", "aria-label": `Delete snapshot ${snapshot.id}`, onclick: remove})));
  }

  function render(main) {
    return listPage(main, {
      title: "Snapshots", caption: "Disk snapshots (new VMs can start from them)",
      columns: () => ["Snapshot", "Kind", "Taken", "From VM", "Image", "vCPUs / memory",
                      "Actions"],
      load: () => api("/v1/snapshots"), row, empty: "No snapshots.", events: "snapshot."});
  }

  RDS.section({id: "snapshots", title: "Snapshots", render});
})();
