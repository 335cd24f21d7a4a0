"""Signing in and one's own account under /api/v1/auth, API tokens under /api/v1/tokens, and the
rule that authenticates and authorizes every request of the app (`authenticate`, `authorize`:
roles.required_role),
which the request gate applies before a request's body is read (appliance/request_gate.py)."""
from __future__ import annotations

import os
import pwd
from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from appliance.access.auth import Principal
from appliance.access.records import AccessKeyRecord
from appliance.access.roles import READ_METHODS, Role, required_role, the_rule
from appliance.access.throttle import TooManyAttemptsError
from appliance.context import Appliance
from appliance.errors import CairnError, ConflictError, ForbiddenError, NotFoundError, UnauthorizedError
from appliance.names import InvalidNameError

from .answers import raises
from .dependencies import ApplianceDep


def _encodable(text: str) -> str:
    # JSON may carry lone surrogates ("\ud800"): valid str, but neither a password nor a database takes them.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError("not valid Unicode text") from e
    return text


Text = Annotated[str, AfterValidator(_encodable)]
TOTP_CODE = r"^[0-9]{6}$"

bearer = HTTPBearer(auto_error=False, description="A session token from /api/v1/auth/login or an access key "
                                                  "(`ck_<id>.<secret>`) from /api/v1/tokens")


def authenticate(appliance: Appliance, method: str, path: str, authorization: str | None) -> Principal | None:
    """Who makes this request, from its Authorization header: None for a public request, else
    the principal its bearer token stands for (UnauthorizedError if none)."""
    if required_role(method, path) is None:
        return None
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise UnauthorizedError("sign in first: send `Authorization: Bearer <session token or access key>`")
    return appliance.auth.authenticate(token.strip())


# The key of a request's scope state under which the local socket's listener puts the uid of
# the process at the other end of the connection, as the kernel gave it (server/local_socket.py):
# a request over TCP never has it, and no header can set it.
SOCKET_PEER_UID = "cairn.socket_peer_uid"
SOCKET_CREDENTIAL = "local socket"   # the credential of the principal a socket request is


def socket_caller(uid: int) -> Principal:
    """Who a request through the local socket is: this machine's administrator, as the local
    CLI is (an admin with no account: it sees everything), when the process that connected runs
    as root or as the user `cairn serve` runs as; any other uid is refused, whatever the
    socket file's mode lets through."""
    served_as = os.getuid()
    if uid not in (0, served_as):
        raise ForbiddenError(f"the appliance's local socket serves root and the user it runs as (uid {served_as}), "
                             f"not uid {uid}: use its HTTPS API with an access key (cairn login)")
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = f"uid {uid}"
    return Principal(0, name, Role.ADMIN, SOCKET_CREDENTIAL)   # user ids start at 1: no account's


def authorize(principal: Principal, method: str, path: str) -> None:
    """ForbiddenError unless the principal's role may make this request (roles.required_role).
    Through the local socket, reads only: the local CLI makes its changes in its own process,
    and a principal with no account owns no token and stands for no one in the audit log."""
    if principal.credential == SOCKET_CREDENTIAL and method not in READ_METHODS:
        raise ForbiddenError(f"the appliance's local socket answers reads only, not {method} {path}: "
                             "`cairn` makes changes in its own process")
    needed = required_role(method, path)
    if needed is not None and not principal.role.allows(needed):
        raise ForbiddenError(f"{principal.name} is a {principal.role.value}: {method} {path} needs an {needed.value}")


def still_signed_in(appliance: Appliance, authorization: str | None) -> bool:
    """Whether the credentials a live connection (an event stream, a console) was opened with
    still stand for someone: it asks now and then, so revoking a session or a key ends it too."""
    _, _, token = (authorization or "").partition(" ")
    try:
        appliance.auth.authenticate(token.strip())
    except UnauthorizedError:
        return False
    return True


def current_principal(request: Request) -> Principal:
    """The caller the request gate authenticated (every route but the public ones has one)."""
    return request.state.principal


Caller = Annotated[Principal, Depends(current_principal)]


class LoginRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: Text = Field(min_length=1, max_length=64)
    password: Text = Field(min_length=1, max_length=1024)
    totp: str | None = Field(None, pattern=TOTP_CODE, description="the current code, for users with TOTP")


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    name: str
    role: str
    disabled: bool
    totp_enabled: bool
    created_at: datetime
    groups: list[str] = []


class LoginOut(BaseModel):
    token: str
    expires_at: datetime
    user: UserOut


class PasswordChange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    current: Text = Field(max_length=1024)
    new: Text = Field(max_length=1024)


class TotpEnrolmentOut(BaseModel):
    secret: str
    uri: str = Field(description="otpauth:// URI for an authenticator app")


class TotpCode(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: str = Field(pattern=TOTP_CODE)


class TokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Text = Field(min_length=1, max_length=128, description="what uses it")
    expires_in_days: float | None = Field(None, strict=True, gt=0, le=3650)


class TokenOut(BaseModel):
    id: str
    name: str
    owner: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None


class IssuedTokenOut(TokenOut):
    token: str = Field(description="`<id>.<secret>`: shown once, send it as `Authorization: Bearer <token>`")


router = APIRouter(prefix="/api/v1", tags=["auth"])


@router.post("/auth/login", response_model=LoginOut, responses=raises(UnauthorizedError, TooManyAttemptsError))
def login(appliance: ApplianceDep, body: LoginRequest, request: Request) -> LoginOut:
    request.state.claimed_user = body.username  # the audit line names who tried
    client = request.client.host if request.client else ""
    issued = appliance.auth.login(body.username, body.password, body.totp, client)
    return LoginOut(token=issued.token, expires_at=issued.expires_at, user=UserOut.model_validate(issued.user))


@router.delete("/auth/session", status_code=204, responses=raises(CairnError))
def logout(appliance: ApplianceDep, caller: Caller,
           credentials: Annotated[HTTPAuthorizationCredentials, Depends(bearer)]) -> Response:
    if caller.credential != "session":
        raise CairnError("this is an access key, not a session: revoke it under /api/v1/tokens")
    appliance.auth.logout(credentials.credentials)
    return Response(status_code=204)


@router.get("/auth/me", response_model=UserOut)
def me(appliance: ApplianceDep, caller: Caller) -> UserOut:
    return UserOut.model_validate(appliance.users.get(caller.name))


@router.get("/auth/rules", response_model=dict[str, list[str]])
def role_rule() -> dict[str, list[str]]:
    """Which role each request needs (appliance/access/roles.py), as data: the console reads it
    to offer only what the caller may do. Any signed-in user may read it."""
    return the_rule()


@router.post("/auth/password", status_code=204, responses=raises(ForbiddenError, CairnError))
def change_password(appliance: ApplianceDep, caller: Caller, body: PasswordChange) -> Response:
    appliance.users.change_password(caller.name, body.current, body.new)
    return Response(status_code=204)


@router.post("/auth/totp", response_model=TotpEnrolmentOut, status_code=201, responses=raises(ConflictError))
def enrol_totp(appliance: ApplianceDep, caller: Caller) -> TotpEnrolmentOut:
    enrolment = appliance.users.enrol_totp(caller.name)
    return TotpEnrolmentOut(secret=enrolment.secret, uri=enrolment.uri)


@router.post("/auth/totp/confirm", response_model=UserOut, responses=raises(ForbiddenError, ConflictError))
def confirm_totp(appliance: ApplianceDep, caller: Caller, body: TotpCode) -> UserOut:
    return UserOut.model_validate(appliance.users.confirm_totp(caller.name, body.code))


@router.get("/tokens", response_model=list[TokenOut])
def list_tokens(appliance: ApplianceDep, caller: Caller) -> list[TokenOut]:
    return [_token_out(key, owner) for key, owner in appliance.auth.list_keys(caller)]


@router.post("/tokens", response_model=IssuedTokenOut, status_code=201, responses=raises(InvalidNameError, CairnError))
def create_token(appliance: ApplianceDep, caller: Caller, body: TokenRequest) -> IssuedTokenOut:
    days = body.expires_in_days
    issued = appliance.auth.create_key(caller, body.name, timedelta(days=days) if days else None)
    return IssuedTokenOut(token=issued.token, **_token_out(issued.record, caller.name).model_dump())


@router.delete("/tokens/{token_id}", response_model=TokenOut, responses=raises(NotFoundError))
def revoke_token(appliance: ApplianceDep, caller: Caller, token_id: str) -> TokenOut:
    return _token_out(*appliance.auth.revoke_key(caller, token_id))


def _token_out(key: AccessKeyRecord, owner: str) -> TokenOut:
    fields = ("id", "name", "created_at", "expires_at", "revoked_at", "last_used_at")
    return TokenOut(owner=owner, **{f: getattr(key, f) for f in fields})
