"""Signing in: sessions from a password (and TOTP code), API tokens (AccessKeys), and telling who calls.

Both kinds of bearer token are 256-bit random secrets of which only the SHA-256 is stored: a
slow KDF adds nothing to secrets that cannot be guessed, and every API call checks one.
  session token   cs_<secret>
  access key      ck_<16 hex id>.<secret>   (the id is public: listings and the audit log show it)
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from appliance.catalog.base import utcnow
from appliance.errors import CairnError, NotFoundError, TotpRequiredError, UnauthorizedError
from appliance.names import check_text

from .records import AccessKeyRecord, SessionRecord, UserRecord
from .roles import Role
from .throttle import LoginThrottle
from .users import UserService

SESSION_PREFIX = "cs_"
KEY_PREFIX = "ck_"
LAST_USED_PRECISION = timedelta(minutes=1)


@dataclass(frozen=True)
class Principal:
    """Who is calling, and with what."""
    user_id: int
    name: str
    role: Role
    credential: str      # "session" or the access key's id
    groups: tuple[str, ...] = ()   # the user's groups: what they see (appliance/access/visibility.py)


@dataclass(frozen=True)
class IssuedSession:
    token: str
    expires_at: datetime
    user: UserRecord


@dataclass(frozen=True)
class IssuedKey:
    record: AccessKeyRecord
    secret: str

    @property
    def token(self) -> str:
        return f"{self.record.id}.{self.secret}"


class AuthService:
    def __init__(self, catalog: sessionmaker[Session], users: UserService, session_ttl: timedelta,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.catalog = catalog
        self.users = users
        self.session_ttl = session_ttl
        self.clock = clock
        self.throttle = LoginThrottle(catalog, clock)

    def login(self, name: str, password: str, totp_code: str | None = None, client: str = "") -> IssuedSession:
        """A new session; `client` (the caller's address) is what attempts are counted by: each
        is counted before its password is checked (throttle.py), and cleared by a success."""
        self.throttle.attempt(name, client)
        user = self.users.check_password(name, password)
        if user is None:
            raise UnauthorizedError("wrong user name or password")
        now = self.clock()
        with self.catalog.begin() as s:
            user = s.get_one(UserRecord, user.id)
            if user.totp_enabled:
                if not totp_code:
                    raise TotpRequiredError(f"{name} signs in with a TOTP code too: send it as `totp`")
                if not self.users.accept_totp(user, totp_code):
                    raise UnauthorizedError("wrong or already used TOTP code")
            s.execute(delete(SessionRecord).where(SessionRecord.expires_at <= now))
            token = SESSION_PREFIX + secrets.token_urlsafe(32)
            expires = now + self.session_ttl
            s.add(SessionRecord(token_hash=_digest(token), user_id=user.id, created_at=now, expires_at=expires))
        self.throttle.succeeded(name, client)
        return IssuedSession(token, expires, user)

    def logout(self, token: str) -> None:
        with self.catalog.begin() as s:
            s.execute(delete(SessionRecord).where(SessionRecord.token_hash == _digest(token)))

    def authenticate(self, token: str) -> Principal:
        """The principal a bearer token stands for; UnauthorizedError if it stands for no one now."""
        if token.startswith(SESSION_PREFIX):
            return self._session_principal(token)
        if token.startswith(KEY_PREFIX) and "." in token:
            return self._key_principal(token)
        raise UnauthorizedError("the bearer token is not a Cairn session token or access key")

    def _session_principal(self, token: str) -> Principal:
        with self.catalog() as s:
            session = s.get(SessionRecord, _digest(token))
            if session is None:
                raise UnauthorizedError("the session is unknown or was ended: sign in again")
            if session.expires_at <= self.clock():
                raise UnauthorizedError("the session has expired: sign in again")
            return _principal(s.get_one(UserRecord, session.user_id), "session")

    def _key_principal(self, token: str) -> Principal:
        key_id, _, secret = token.partition(".")
        now = self.clock()
        with self.catalog.begin() as s:
            key = s.get(AccessKeyRecord, key_id)
            if key is None or not hmac.compare_digest(key.secret_hash, _digest(secret)):
                raise UnauthorizedError("unknown access key or wrong secret")
            if key.revoked_at is not None:
                raise UnauthorizedError(f"access key {key_id} was revoked")
            if key.expires_at is not None and key.expires_at <= now:
                raise UnauthorizedError(f"access key {key_id} has expired")
            # A minute's precision is plenty, and spares a catalog write on every call of a busy script.
            if key.last_used_at is None or now - key.last_used_at > LAST_USED_PRECISION:
                key.last_used_at = now
            return _principal(s.get_one(UserRecord, key.user_id), key_id)

    # -- access keys ----------------------------------------------------------------------------

    def create_key(self, owner: Principal, name: str, expires_in: timedelta | None = None) -> IssuedKey:
        """A new access key acting as `owner`; its secret is shown once, here, and never again."""
        if not name.strip():
            raise CairnError("an access key needs a name saying what uses it")
        check_text("an access key's name", name, 128)
        secret = secrets.token_urlsafe(32)
        now = self.clock()
        record = AccessKeyRecord(id=KEY_PREFIX + secrets.token_hex(8), user_id=owner.user_id, name=name.strip(),
                                 secret_hash=_digest(secret), created_at=now,
                                 expires_at=now + expires_in if expires_in else None)
        with self.catalog.begin() as s:
            s.add(record)
        return IssuedKey(record, secret)

    def list_keys(self, viewer: Principal) -> list[tuple[AccessKeyRecord, str]]:
        """(key, owner name): an admin sees every key, anyone else their own."""
        query = select(AccessKeyRecord, UserRecord.name).join(UserRecord, UserRecord.id == AccessKeyRecord.user_id)
        if viewer.role != Role.ADMIN:
            query = query.where(AccessKeyRecord.user_id == viewer.user_id)
        with self.catalog() as s:
            return [(key, owner) for key, owner in s.execute(query.order_by(AccessKeyRecord.created_at))]

    def revoke_key(self, by: Principal, key_id: str) -> tuple[AccessKeyRecord, str]:
        """Revoke (not delete: listings and the audit log keep naming it); returns (key, owner name)."""
        with self.catalog.begin() as s:
            key = s.get(AccessKeyRecord, key_id)
            # Someone else's key is "not found" to a non-admin: ids are not confirmed to strangers.
            if key is None or (key.user_id != by.user_id and by.role != Role.ADMIN):
                raise NotFoundError(f"no access key {key_id}")
            if key.revoked_at is None:
                key.revoked_at = self.clock()
            return key, s.get_one(UserRecord, key.user_id).name


def _principal(user: UserRecord, credential: str) -> Principal:
    if user.disabled:
        raise UnauthorizedError(f"user {user.name} is disabled")
    return Principal(user.id, user.name, Role(user.role), credential, tuple(user.groups or ()))


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()
