"""Bearer tokens with roles: viewer < operator < admin.

Tokens come from ``GOVERNOR_API_TOKENS`` as ``role:token,role:token``. Without the
variable, ``serve`` generates one token per role for the run (and binds loopback only).
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from fastapi import HTTPException, Request

from controlplane import conventions as cv
from controlplane.errors import ConfigError, Problem


@dataclass(frozen=True)
class Principal:
    role: str
    token_hint: str  # last 4 chars, for audit logs; never the token


class TokenAuth:
    def __init__(self, tokens: Mapping[str, str]) -> None:
        """``tokens`` maps token -> role."""
        self._tokens = dict(tokens)

    @classmethod
    def parse(cls, spec: str, source: str = cv.ENV_API_TOKENS) -> TokenAuth:
        tokens: dict[str, str] = {}
        problems = []
        for i, item in enumerate(p.strip() for p in spec.split(",")):
            if not item:
                continue
            role, sep, token = item.partition(":")
            if not sep or not token:
                problems.append(Problem(source, f"[{i}]", "expected role:token"))
            elif role not in cv.ROLES:
                problems.append(
                    Problem(
                        source,
                        f"[{i}]",
                        f"unknown role {role!r}, expected one of {', '.join(cv.ROLES)}",
                    )
                )
            elif len(token) < 16:
                problems.append(Problem(source, f"[{i}]", "token must have at least 16 characters"))
            else:
                tokens[token] = role
        if problems:
            raise ConfigError(problems)
        if not tokens:
            raise ConfigError([Problem(source, "", "no tokens given")])
        return cls(tokens)

    @classmethod
    def generated(cls) -> tuple[TokenAuth, dict[str, str]]:
        by_role = {role: f"gov_{role}_{secrets.token_urlsafe(18)}" for role in cv.ROLES}
        return cls({tok: role for role, tok in by_role.items()}), by_role

    def authenticate(self, header: str | None) -> Principal | None:
        if not header or not header.startswith("Bearer "):
            return None
        given = header[len("Bearer ") :].strip()
        found = None
        for token, role in self._tokens.items():
            # Compare against every token so timing does not reveal which prefix matched.
            if hmac.compare_digest(token.encode(), given.encode()):
                found = Principal(role, token[-4:])
        return found


def rank(role: str) -> int:
    return cv.ROLES.index(role)


def require(role: str) -> Callable[[Request], Principal]:
    """FastAPI dependency: the caller must hold ``role`` or a stronger one."""

    def dep(request: Request) -> Principal:
        auth: TokenAuth = request.app.state.ctx.auth
        principal = auth.authenticate(request.headers.get("authorization"))
        if principal is None:
            raise HTTPException(
                401, "missing or unknown bearer token", headers={"WWW-Authenticate": "Bearer"}
            )
        if rank(principal.role) < rank(role):
            raise HTTPException(403, f"role {principal.role!r} may not do this; needs {role!r}")
        return principal

    return dep
