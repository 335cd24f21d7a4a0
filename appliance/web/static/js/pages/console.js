// A VM's screen in the browser: a one-time console ticket from the API, then noVNC (vendored, loaded
// only here) over the appliance's WebSocket proxy to the VM's VNC socket.
import { call } from "../api.js";
import { fill, h } from "../dom.js";

export async function consolePage(main, { name }, signal) {
  const state = h("span", { "data-console-state": "connecting" }, "connecting…");
  const screen = h("div", { class: "screen" });
  fill(main, h("h1", {}, `Console of ${name} `, state),
    h("p", {}, h("a", { href: `#/vm/${encodeURIComponent(name)}` }, `back to VM ${name}`)), screen);
  const ticket = await call("POST", `/vms/${encodeURIComponent(name)}/console`);
  const { default: RFB } = await import("../../vendor/novnc/core/rfb.js");
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const rfb = new RFB(screen, `${scheme}://${location.host}${ticket.url}`,
                      { credentials: { password: ticket.password }, wsProtocols: ["binary"] });
  rfb.scaleViewport = true;
  const show = (word, text) => { state.dataset.consoleState = word; state.textContent = text; };
  rfb.addEventListener("connect", () => show("connected", "connected"));
  rfb.addEventListener("disconnect", (e) => show("disconnected", e.detail.clean ? "disconnected" : "connection lost"));
  rfb.addEventListener("securityfailure", (e) => show("refused", `refused: ${e.detail.reason ?? e.detail.status}`));
  signal.addEventListener("abort", () => rfb.disconnect());
}
