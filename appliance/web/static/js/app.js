// The console's shell: signing in and out, the session's end, and which page shows for the address.
import { call, hooks, session } from "./api.js";
import { loadRule, may } from "./roles.js";
import { notify, notifyError } from "./ui.js";
import { accountPage } from "./pages/account.js";
import { auditPage } from "./pages/audit.js";
import { consolePage } from "./pages/console.js";
import { dashboardPage } from "./pages/dashboard.js";
import { filesPage } from "./pages/files.js";
import { hostsPage } from "./pages/hosts.js";
import { imagesPage } from "./pages/images.js";
import { jobPage } from "./pages/job.js";
import { jobsPage } from "./pages/jobs.js";
import { networksPage } from "./pages/networks.js";
import { notificationsPage } from "./pages/notifications.js";
import { policiesPage } from "./pages/policies.js";
import { recyclePage } from "./pages/recycle.js";
import { searchPage } from "./pages/search.js";
import { storePage } from "./pages/store.js";
import { usersPage } from "./pages/users.js";
import { vmPage } from "./pages/vm.js";
import { vmsPage } from "./pages/vms.js";

// "#/vm/web1" -> vmPage(main, {name: "web1"}, signal)
const ROUTES = [
  [/^#?\/?$/, dashboardPage, "dashboard"],
  [/^#\/vms$/, vmsPage, "vms"],
  [/^#\/vm\/(?<name>[^/]+)$/, vmPage, "vms"],
  [/^#\/console\/(?<name>[^/]+)$/, consolePage, "vms"],
  [/^#\/jobs$/, jobsPage, "jobs"],
  [/^#\/job\/(?<id>[^/]+)$/, jobPage, "jobs"],
  [/^#\/files\/(?<backup>[^/?]+)\/(?<disk>[^/?]+)(?:\?(?<query>.*))?$/, filesPage, "vms"],
  [/^#\/store$/, storePage, "store"],
  [/^#\/policies$/, policiesPage, "policies"],
  [/^#\/images$/, imagesPage, "images"],
  [/^#\/networks$/, networksPage, "networks"],
  [/^#\/hosts$/, hostsPage, "hosts"],
  [/^#\/recycle-bin$/, recyclePage, "recycle-bin"],
  [/^#\/audit$/, auditPage, "audit"],
  [/^#\/notifications$/, notificationsPage, "notifications"],
  [/^#\/users$/, usersPage, "users"],
  [/^#\/account$/, accountPage, "account"],
  [/^#\/search(?:\?(?<query>.*))?$/, searchPage, "search"],
];

const $ = (id) => document.getElementById(id);
let leaving = new AbortController();   // aborts the live streams of the page being left
let expiry;

async function show() {
  leaving.abort();
  leaving = new AbortController();
  const current = session.get();
  $("top").hidden = !current;
  $("login").hidden = Boolean(current);
  const main = $("main");
  main.replaceChildren();
  if (!current) return;
  try {
    await loadRule();
  } catch (e) {
    notifyError(e);
    return;
  }
  // Pages only an admin may read are not offered to others.
  for (const link of document.querySelectorAll("header a[data-needs]")) link.hidden = !may("GET", link.dataset.needs);
  const route = ROUTES.find(([pattern]) => pattern.test(location.hash)) ?? ROUTES[0];
  // Names in the address are decoded; a query string stays as it is, for URLSearchParams.
  const params = Object.fromEntries(Object.entries(location.hash.match(route[0])?.groups ?? {})
    .filter(([, v]) => v !== undefined).map(([k, v]) => [k, k === "query" ? v : decodeURIComponent(v)]));
  for (const link of document.querySelectorAll("header a[data-page]")) {
    link.classList.toggle("active", link.dataset.page === route[2]);
  }
  main.dataset.page = route[2];
  if (route[2] !== "search") $("search").value = "";   // the box says what the page shows, or nothing
  // Each page draws into a new element of its own: a late answer of a page left behind lands nowhere.
  const page = document.createElement("div");
  main.append(page);
  try {
    await route[1](page, params, leaving.signal);
  } catch (e) {
    if (e.name !== "AbortError") notifyError(e);
  }
}

function signedOut(message) {
  session.clear();
  clearTimeout(expiry);
  $("login-message").textContent = message;
  notify("");
  show();
}

function signedIn() {
  const current = session.get();
  $("whoami").textContent = `${current.user.name} (${current.user.role})`;
  clearTimeout(expiry);
  // setTimeout holds at most ~24 days; a session is far shorter.
  expiry = setTimeout(() => signedOut("Your session has expired: sign in again."),
                      Math.min(new Date(current.expires_at) - Date.now(), 2 ** 31 - 1));
}

async function signIn(event) {
  event.preventDefault();
  const form = event.target;
  const values = Object.fromEntries(new FormData(form));
  const body = { username: values.username, password: values.password };
  if (values.totp) body.totp = values.totp;
  try {
    session.save(await call("POST", "/auth/login", body));
  } catch (e) {
    if (e.code === "TotpRequiredError") {
      $("totp-field").hidden = false;
      form.totp.required = true;
      form.totp.focus();
    }
    $("login-message").textContent = e.message;
    return;
  }
  form.reset();
  $("totp-field").hidden = true;
  form.totp.required = false;
  $("login-message").textContent = "";
  signedIn();
  show();
}

async function signOut() {
  await call("DELETE", "/auth/session").catch(() => {});
  signedOut("Signed out.");
}

hooks.sessionLost = (message) => signedOut(message);
$("login").addEventListener("submit", signIn);
$("sign-out").addEventListener("click", signOut);
$("search-form").addEventListener("submit", (event) => {
  event.preventDefault();
  location.hash = `#/search?${new URLSearchParams({ q: $("search").value.trim() })}`;
});
window.addEventListener("hashchange", show);
if (session.get()) signedIn();
show();
