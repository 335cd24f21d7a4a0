"""Users: accounts with a role, a scrypt-hashed password and, once enrolled, a TOTP second factor."""
from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.orm import Session, object_session, sessionmaker
from sqlalchemy.orm.attributes import set_committed_value

from appliance.access import totp
from appliance.catalog.base import rows_changed, utcnow
from appliance.errors import CairnError, ConflictError, ForbiddenError, NotFoundError
from appliance.names import ACCOUNT

from .passwords import hash_password, unusable_hash, verify_password
from .records import AccessKeyRecord, SessionRecord, UserRecord, VMAccessRecord
from .roles import Role
from .secrets import SecretBox

log = logging.getLogger("cairn.users")
MIN_PASSWORD = 8
INITIAL_ADMIN = "admin"
# Checked against when the user does not exist, so a wrong name costs as long as a wrong password.
_DUMMY_HASH = unusable_hash()


@dataclass(frozen=True)
class TotpEnrolment:
    secret: str
    uri: str


class UserService:
    def __init__(self, catalog: sessionmaker[Session], box: SecretBox,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.catalog = catalog
        self.box = box
        self.clock = clock

    def create(self, name: str, password: str, role: Role) -> UserRecord:
        ACCOUNT.check("user", name, CairnError)
        _check_password(password)
        with self.catalog.begin() as s:
            if s.scalar(select(UserRecord).where(UserRecord.name == name)):
                raise ConflictError(f"a user named {name} exists")
            user = UserRecord(name=name, role=Role(role).value, password_hash=hash_password(password),
                              disabled=False, totp_enabled=False)
            s.add(user)
        return user

    def get(self, name: str) -> UserRecord:
        with self.catalog() as s:
            return _user(s, name)

    def update(self, name: str, *, role: Role | None = None, password: str | None = None,
               disabled: bool | None = None, reset_totp: bool = False,
               groups: list[str] | None = None) -> UserRecord:
        """Change what is given. A new password or disabling ends the user's sessions and revokes
        their access keys, at once and for good (a key outlives neither); a role change or a TOTP
        reset ends their sessions. `groups` replaces the user's groups (appliance/access/visibility.py)."""
        if password is not None:
            _check_password(password)
        if groups is not None:
            groups = check_groups(groups)
        with self.catalog.begin() as s:
            user = _user(s, name)
            losing_admin = user.role == Role.ADMIN and not user.disabled and (
                (role is not None and role != Role.ADMIN) or disabled is True)
            if losing_admin:
                _keep_an_admin(s, user)
            if role is not None:
                user.role = Role(role).value
            if password is not None:
                user.password_hash = hash_password(password)
            if disabled is not None:
                user.disabled = disabled
            if reset_totp:
                user.totp_secret, user.totp_enabled, user.totp_last_step = None, False, None
            if groups is not None:
                user.groups = groups
            if role is not None or password is not None or disabled or reset_totp:
                s.execute(delete(SessionRecord).where(SessionRecord.user_id == user.id))
            if password is not None or disabled:
                s.execute(update(AccessKeyRecord).where(AccessKeyRecord.user_id == user.id,
                                                        AccessKeyRecord.revoked_at.is_(None))
                          .values(revoked_at=self.clock()))
        return user

    def delete(self, name: str) -> None:
        with self.catalog.begin() as s:
            user = _user(s, name)
            if user.role == Role.ADMIN and not user.disabled:
                _keep_an_admin(s, user)
            # Explicit, not only ON DELETE CASCADE: SQLite enforces foreign keys per connection.
            s.execute(delete(SessionRecord).where(SessionRecord.user_id == user.id))
            s.execute(delete(AccessKeyRecord).where(AccessKeyRecord.user_id == user.id))
            # Their VMs (and backups) go to an owner no new user can be, not to the next "alice".
            s.execute(update(VMAccessRecord).where(VMAccessRecord.owner == user.name)
                      .values(owner=deleted_owner(user.name)))
            s.delete(user)

    def check_password(self, name: str, password: str) -> UserRecord | None:
        """The enabled user with this name and password, else None (in about the same time)."""
        with self.catalog() as s:
            user = s.scalar(select(UserRecord).where(UserRecord.name == name))
        if user is None:
            verify_password(password, _DUMMY_HASH)
            return None
        if not verify_password(password, user.password_hash) or user.disabled:
            return None
        return user

    def change_password(self, name: str, current: str, new: str) -> None:
        if self.check_password(name, current) is None:
            raise ForbiddenError("the current password is wrong: give the one you sign in with")
        self.update(name, password=new)

    # -- TOTP -----------------------------------------------------------------------------------

    def enrol_totp(self, name: str) -> TotpEnrolment:
        """A new TOTP secret for the user, in force once confirmed with a code from it."""
        secret = totp.new_secret()
        with self.catalog.begin() as s:
            user = _user(s, name)
            if user.totp_enabled:
                raise ConflictError(f"{name} has TOTP already; an admin can reset it (cairn user set NAME --reset-totp)")
            user.totp_secret = self.box.seal(secret)
            user.totp_last_step = None
        return TotpEnrolment(secret, totp.provisioning_uri(secret, name))

    def confirm_totp(self, name: str, code: str) -> UserRecord:
        with self.catalog.begin() as s:
            user = _user(s, name)
            if user.totp_secret is None:
                raise ConflictError(f"{name} has no TOTP enrolment to confirm")
            if user.totp_enabled:
                raise ConflictError(f"{name} has TOTP already")
            if not self.accept_totp(user, code):
                raise ForbiddenError("wrong TOTP code: check the authenticator's clock and try the next code")
            user.totp_enabled = True
        return user

    def accept_totp(self, user: UserRecord, code: str) -> bool:
        """Whether `code` is good for the user now; its step is claimed in the catalog, so it is
        not accepted again: one conditional UPDATE decides, not what this session read (eight
        sign-ins racing with one code get one yes). `user` must belong to an open transaction."""
        assert user.totp_secret is not None
        step = totp.accepted_step(self.box.unseal_text(user.totp_secret), code, self.clock(), user.totp_last_step)
        if step is None:
            return False
        session = object_session(user)
        assert session is not None
        claimed = session.execute(
            update(UserRecord).where(UserRecord.id == user.id,
                                     or_(UserRecord.totp_last_step.is_(None), UserRecord.totp_last_step < step))
            .values(totp_last_step=step).execution_options(synchronize_session=False))
        if rows_changed(claimed) != 1:
            return False
        set_committed_value(user, "totp_last_step", step)
        return True

    # -- first start ----------------------------------------------------------------------------

    def ensure_initial_admin(self, password_file: Path) -> str | None:
        """With no user at all, create `admin` with a random password written to `password_file`
        (mode 0600). Returns the password when it made one."""
        with self.catalog() as s:
            if s.scalar(select(func.count()).select_from(UserRecord)):
                return None
        password = secrets.token_urlsafe(18)
        fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(password + "\n")
        os.chmod(password_file, 0o600)  # an older file may have had looser bits
        self.create(INITIAL_ADMIN, password, Role.ADMIN)
        return password

    # Last in the class: the name would shadow the built-in `list` in the annotations after it.
    def list(self) -> list[UserRecord]:
        with self.catalog() as s:
            return list(s.scalars(select(UserRecord).order_by(UserRecord.name)))


def deleted_owner(name: str) -> str:
    """The owner a deleted user's VMs keep (appliance/visibility.py): it says who it was, and no
    user can ever be named so (it holds a space)."""
    return f"{name[:54]} (deleted)"


def _user(s: Session, name: str) -> UserRecord:
    user = s.scalar(select(UserRecord).where(UserRecord.name == name))
    if user is None:
        raise NotFoundError(f"no user named {name}")
    return user


def _keep_an_admin(s: Session, leaving: UserRecord) -> None:
    others = s.scalar(select(func.count()).select_from(UserRecord).where(
        UserRecord.role == Role.ADMIN.value, UserRecord.disabled.is_(False), UserRecord.id != leaving.id))
    if not others:
        raise ConflictError(f"{leaving.name} is the last enabled admin: make another admin first")


def check_groups(groups: list[str]) -> list[str]:
    """Valid group names (like user names), sorted, each once."""
    for group in groups:
        ACCOUNT.check("group", group, CairnError)
    return sorted(set(groups))


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise CairnError(f"a password needs at least {MIN_PASSWORD} characters")
