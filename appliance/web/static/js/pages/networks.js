// Networks (a bridge with DHCP from an address pool) and the pools: compute (hosts), storage
// (folders for disks) and address (subnets, with each address leased and to whom). Adding answers the
// network or pool, deleting nothing: the tables are redrawn from that, not asked for again.
import { call, get } from "../api.js";
import { fill, h, table } from "../dom.js";
import { actionButton, actionForm, field, withAnswer } from "../ui.js";

const words = (text) => text.split(/[\s,]+/).filter(Boolean);

function networkForm(pools, added) {
  return actionForm("POST", "/networks", [
    field("Name", h("input", { name: "name", required: true })),
    field("Address pool", h("select", { name: "address_pool", required: true },
      pools.filter((p) => p.kind === "address").map((p) => h("option", { value: p.name }, `${p.name} (${p.subnet})`)))),
    field("Bridge (default cbr-name)", h("input", { name: "bridge" })),
    field("Network namespace (default the host's)", h("input", { name: "netns" })),
  ], "Add network", async (values, form) => {
    added(await call("POST", "/networks", { name: values.name, address_pool: values.address_pool,
                                            bridge: values.bridge || null, netns: values.netns || null }));
    form.reset();
  });
}

// One form for the three kinds of pool: the fields of the kind chosen are the ones sent.
function poolForm(added) {
  const kind = h("select", { name: "kind" }, ["address", "storage", "compute"].map((k) => h("option", { value: k }, k)));
  return actionForm("POST", "/pools", [
    field("Kind", kind), field("Name", h("input", { name: "name", required: true })),
    field("Subnet (address)", h("input", { name: "subnet", placeholder: "10.77.0.0/24" })),
    field("Folder (storage)", h("input", { name: "path", placeholder: "/srv/vm-disks" })),
    field("Hosts (compute)", h("input", { name: "hosts", placeholder: "local, node2" })),
  ], "Add pool", async (values, form) => {
    const body = { kind: values.kind, name: values.name };
    if (values.kind === "address") body.subnet = values.subnet;
    if (values.kind === "storage") body.path = values.path;
    if (values.kind === "compute") body.hosts = words(values.hosts);
    added(await call("POST", "/pools", body));
    form.reset();
  });
}

function describePool(p) {
  if (p.kind === "address") return `${p.subnet}, gateway ${p.gateway}, ${p.first}–${p.last} (${p.size} addresses)`;
  if (p.kind === "storage") return `${p.type} folder ${p.path}`;
  return `hosts ${p.hosts.join(", ")}`;
}

export async function networksPage(main) {
  const leasesShown = h("div", { "data-leases": "" });
  const showLeases = async (pool) => {
    const leases = await get(`/pools/address/${encodeURIComponent(pool)}/leases`);
    fill(leasesShown, h("h2", {}, `Leases of ${pool}`),
      table(["Address", "Held by", "NIC", "MAC"], leases.map((l) => h("tr", { "data-lease": l.address },
        h("td", {}, l.address), h("td", {}, l.owner), h("td", {}, l.nic ?? "–"), h("td", {}, l.mac ?? "–"))),
        "no address leased"));
  };
  let [networks, pools] = await Promise.all([get("/networks"), get("/pools")]);
  const networkAdded = (network) => { networks = withAnswer(networks, network); render(); };
  // A pool's name is unique within its kind only.
  const samePool = (a, b) => a.kind === b.kind && a.name === b.name;
  const poolAdded = (pool) => { pools = [...pools.filter((p) => !samePool(p, pool)), pool]; render(); };
  const addPool = poolForm(poolAdded);
  const render = () => {
    fill(main, h("h1", {}, "Networks and pools"),
      table(["Network", "Bridge", "Address pool", "Subnet", "Gateway", ""], networks.map((n) => {
        const path = `/networks/${encodeURIComponent(n.name)}`;
        return h("tr", { "data-network": n.name },
          h("td", {}, n.name), h("td", {}, n.bridge), h("td", {}, n.address_pool), h("td", {}, n.subnet),
          h("td", {}, n.gateway),
          h("td", { class: "actions" }, actionButton("Delete", "DELETE", path, () => call("DELETE", path), () => {
            networks = networks.filter((other) => other.name !== n.name);
            render();
          }, { class: "danger" })));
      }), "no networks"),
      networkForm(pools, networkAdded),
      h("h2", {}, "Pools"),
      table(["Pool", "Kind", "What", ""], pools.map((p) => {
        const path = `/pools/${p.kind}/${encodeURIComponent(p.name)}`;
        return h("tr", { "data-pool": p.name },
          h("td", {}, p.name), h("td", {}, p.kind), h("td", {}, describePool(p)),
          h("td", { class: "actions" },
            p.kind === "address" && actionButton("Leases", "GET", `${path}/leases`, () => showLeases(p.name)),
            actionButton("Delete", "DELETE", path, () => call("DELETE", path), () => {
              pools = pools.filter((other) => !samePool(other, p));
              render();
            }, { class: "danger" })));
      }), "no pools"),
      addPool, leasesShown);
  };
  render();
}
