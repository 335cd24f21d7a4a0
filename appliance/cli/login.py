"""`cairn login URL` and `cairn logout`: working on an appliance through its API.

A login asks the appliance for an access key of its own (POST /api/v1/tokens, named after this
machine) and keeps it in the user's config dir ($XDG_CONFIG_HOME/cairn/login.json, else
~/.config/cairn/login.json; mode 0600), with the SHA-256 fingerprint of the appliance's
certificate when the system's CAs do not vouch for it (the self-signed one `cairn serve` makes):
every later request checks the certificate against it before sending anything. From then on
the same commands work there, until `cairn logout` revokes the key; --url or $CAIRN_URL (with
$CAIRN_TOKEN, $CAIRN_FINGERPRINT for scripts) name an appliance for one command, and an explicit
--data-dir or $CAIRN_DATA_DIR means this machine.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import typer

from .common import CliError, err, out, password_from_stdin, reports_errors, state

login_app = typer.Typer()
logout_app = typer.Typer()


def canonical_url(url: str) -> str:
    """https://host[:port][/prefix] with the port spelled out, so a login is found by any spelling."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise CliError(f"{url!r} is not an appliance's address: give https://HOST[:PORT], e.g. https://cairn.example:443")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}:{port}{parts.path.rstrip('/')}"


def fingerprint_of(der: bytes) -> str:
    """A certificate's SHA-256 fingerprint as openssl prints it: AB:CD:..."""
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


def normal_fingerprint(text: str) -> str:
    """A fingerprint as typed (colons or not, any case, after `sha256:` or openssl's `...=`) in openssl's form."""
    digits = text.rpartition("=")[2].strip().lower().removeprefix("sha256:").replace(":", "").replace(" ", "")
    if len(digits) != 64 or any(c not in "0123456789abcdef" for c in digits):
        raise CliError(f"{text!r} is not a SHA-256 fingerprint (64 hex digits, colons allowed)")
    return ":".join(digits[i:i + 2].upper() for i in range(0, 64, 2))


@dataclass
class Login:
    url: str
    user: str
    token: str                  # the access key, `ck_<id>.<secret>`
    token_id: str
    fingerprint: str | None     # the certificate pinned; None: the system's CAs vouch for it


@dataclass
class Logins:
    """The appliances this user signed in to, and the one commands go to (`current`)."""
    current: str | None = None
    appliances: dict[str, Login] = field(default_factory=dict)

    @staticmethod
    def path() -> Path:
        config = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
        return Path(config) / "cairn" / "login.json"

    @classmethod
    def load(cls) -> Logins:
        try:
            data = json.loads(cls.path().read_text())
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError) as e:
            raise CliError(f"cannot read the logins in {cls.path()}: {e}; remove the file and sign in again") from None
        return cls(data.get("current"), {url: Login(**login) for url, login in data.get("appliances", {}).items()})

    def save(self) -> None:
        """Written whole, readable by this user only (it holds access keys), then moved into place."""
        path = self.path()
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        text = json.dumps({"current": self.current, "appliances": {u: asdict(a) for u, a in self.appliances.items()}},
                          indent=2)
        fd, temporary = tempfile.mkstemp(prefix=".login-", dir=path.parent)   # created 0600
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text + "\n")
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def get(self, url: str) -> Login | None:
        return self.appliances.get(url)


@login_app.command()
@reports_errors
def login(url: str | None = typer.Argument(None, help="The appliance, e.g. https://cairn.example:443 "
                                                      "(default: --url or $CAIRN_URL)."),
          user: str | None = typer.Option(None, "--user", help="Who signs in (asked at a terminal)."),
          password_stdin: bool = typer.Option(False, "--password-stdin", help="Read the password from stdin "
                                              "(else it is asked for at a terminal)."),
          fingerprint: str | None = typer.Option(None, "--fingerprint", help="SHA-256 fingerprint of the "
                                                 "appliance's certificate, as `cairn serve` prints it: trust "
                                                 "that certificate without being asked."),
          totp: str | None = typer.Option(None, "--totp", help="The current TOTP code, for a user with TOTP "
                                                               "(asked at a terminal)."),
          expires_in_days: float | None = typer.Option(None, "--expires-in-days", min=0.01, help="The access "
                                                       "key ends after this many days (default: when revoked).")
          ) -> None:
    """Sign in to an appliance: the same commands then work there, through its API.

    Its certificate is checked: the system's CAs vouch for it, or its fingerprint (a self-signed
    one's) is shown and you are asked to trust it, or --fingerprint names it. An access key of
    your own is kept in ~/.config/cairn/login.json (mode 0600) with the fingerprint; `cairn logout`
    revokes it."""
    from .remote import ApiError, Endpoint, RemoteClient

    url = canonical_url(url or state.url or _no_url())
    endpoint = Endpoint(url, _trusted_fingerprint(url, fingerprint))
    name = user or _asked("user", "--user NAME")
    password = _password(password_stdin)
    anonymous = RemoteClient(endpoint, "", "login")
    body: dict[str, str | None] = {"username": name, "password": password, "totp": totp}
    try:
        session = anonymous.call("POST", "/auth/login", body)
    except ApiError as e:
        if "TotpRequiredError" not in e.error_codes or totp is not None:
            raise
        body["totp"] = _asked("TOTP code", "--totp CODE")
        session = anonymous.call("POST", "/auth/login", body)
    signed_in = RemoteClient(endpoint, session["token"], "login")
    key = signed_in.call("POST", "/tokens", {"name": f"cairn CLI on {socket.gethostname()}",
                                             "expires_in_days": expires_in_days})
    signed_in.call("DELETE", "/auth/session")   # the key is what stays; the session it came from ends

    logins = Logins.load()
    if (previous := logins.get(url)) is not None:
        _revoke(previous, quiet=True)
    logins.appliances[url] = Login(url, name, key["token"], key["id"], endpoint.fingerprint)
    logins.current = url
    logins.save()
    role = session["user"]["role"]
    out.print(f"signed in to {url} as {name} ({role}); commands now work there (`cairn vm list`...) until "
              f"`cairn logout`. Access key {key['id']} kept in {Logins.path()}", highlight=False, soft_wrap=True)
    if os.environ.get("CAIRN_DATA_DIR"):
        err.print("note: $CAIRN_DATA_DIR is set: it keeps commands on this machine; unset it to work there",
                  highlight=False)


@logout_app.command()
@reports_errors
def logout(url: str | None = typer.Argument(None, help="The appliance (default: the one signed in to last).")
           ) -> None:
    """Sign out: revoke the access key `cairn login` made and forget it; commands work on this
    machine again (or on the appliance --url or $CAIRN_URL names)."""
    logins = Logins.load()
    url = canonical_url(url) if url else logins.current
    login = logins.get(url) if url else None
    if url is None or login is None:
        raise CliError(f"not signed in to {url}" if url else "not signed in to any appliance")
    revoked = _revoke(login, quiet=False)
    del logins.appliances[url]
    if logins.current == url:
        logins.current = None
    logins.save()
    out.print(f"signed out of {url}" + ("; its access key is revoked" if revoked else ""), highlight=False)


def _revoke(login: Login, quiet: bool) -> bool:
    """Revoke a login's key on its appliance; if that cannot be done, say so (unless `quiet`)."""
    from .remote import Endpoint, RemoteClient

    try:
        RemoteClient(Endpoint(login.url, login.fingerprint), login.token, "login").call(
            "DELETE", f"/tokens/{login.token_id}")
    except CliError as e:
        if not quiet:
            err.print(f"note: access key {login.token_id} could not be revoked on {login.url} ({e}); it is "
                      "forgotten here: revoke it there (the console, or DELETE /api/v1/tokens/ID)", highlight=False)
        return False
    return True


def _trusted_fingerprint(url: str, given: str | None) -> str | None:
    """The fingerprint to pin for the appliance's certificate (None: the system's CAs vouch for
    it), once it is trusted: named by --fingerprint, or shown and agreed to at a terminal."""
    from .remote import CertificateError, Endpoint

    if urlsplit(url).scheme == "http":
        err.print(f"warning: {url} is plain HTTP: the password and the access key cross the network in clear",
                  highlight=False)
        return None
    der, vouched = Endpoint(url).certificate()
    found = fingerprint_of(der)
    if given is not None:
        if normal_fingerprint(given) != found:
            raise CertificateError(f"the certificate of {url} has the SHA-256 fingerprint {found}, not {given}: "
                                   "this is not the appliance you named (or its certificate changed); nothing "
                                   "was sent")
        return found
    if vouched:
        return None
    where = "on the appliance: `cairn serve` prints it when it starts, or `openssl x509 -noout -fingerprint " \
            "-sha256 -in <data dir>/tls/cert.pem`"
    if not sys.stdin.isatty():
        raise CertificateError(f"the certificate of {url} is not vouched for by this machine's CAs (self-signed?); "
                               f"its SHA-256 fingerprint is {found}. Compare it with the one {where}, then run "
                               f"again with --fingerprint {found}")
    err.print(f"The certificate of {url} is not vouched for by this machine's CAs (self-signed?).\n"
              f"Its SHA-256 fingerprint is\n  {found}\nCompare it with the one {where}.", highlight=False)
    if not typer.confirm("Trust this certificate?", default=False, err=True):
        raise CertificateError(f"the certificate of {url} was not trusted; nothing was sent")
    return found


def _password(from_stdin: bool) -> str:
    if from_stdin:
        return password_from_stdin()
    if not sys.stdin.isatty():
        raise CliError("no terminal to ask for the password: give it on stdin with --password-stdin")
    return str(typer.prompt("password", hide_input=True, err=True))


def _asked(what: str, option: str) -> str:
    if not sys.stdin.isatty():
        raise CliError(f"no terminal to ask for the {what}: give {option}")
    return str(typer.prompt(what, err=True))


def _no_url() -> str:
    raise CliError("which appliance? `cairn login https://HOST:PORT` (or set --url / $CAIRN_URL)")
