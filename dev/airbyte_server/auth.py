"""OAuth2 client-credentials tokens, as Airbyte's `/applications/token` issues them.

Tokens are self-contained and HMAC-signed with a key derived from the client secret, so they
survive a server restart like Airbyte's JWTs do. `revoke_all()` (a fault) invalidates every
token issued so far without touching the credentials.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass


class InvalidCredentialsError(Exception):
    pass


class InvalidTokenError(Exception):
    pass


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class TokenIssuer:
    client_id: str
    client_secret: str
    ttl_seconds: int
    # Tokens issued before this instant are rejected (see revoke_all).
    not_before: float = 0.0

    def __post_init__(self) -> None:
        self._key = hashlib.sha256(f"local-airbyte:{self.client_id}:{self.client_secret}".encode()).digest()

    def issue(self, client_id: str | None, client_secret: str | None) -> dict[str, object]:
        ok = hmac.compare_digest(client_id or "", self.client_id) and hmac.compare_digest(
            client_secret or "", self.client_secret
        )
        if not ok:
            raise InvalidCredentialsError
        now = time.time()
        claims = {
            "sub": self.client_id,
            "iat": now,
            "exp": now + self.ttl_seconds,
            "jti": secrets.token_hex(8),
        }
        payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
        token = f"{payload}.{_b64(hmac.new(self._key, payload.encode(), hashlib.sha256).digest())}"
        return {"access_token": token, "token_type": "Bearer", "expires_in": self.ttl_seconds}

    def verify(self, authorization: str | None) -> None:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise InvalidTokenError("missing bearer token")
        payload, _, signature = token.partition(".")
        expected = _b64(hmac.new(self._key, payload.encode(), hashlib.sha256).digest())
        if not hmac.compare_digest(signature, expected):
            raise InvalidTokenError("invalid token")
        claims = json.loads(_unb64(payload))
        if claims["exp"] <= time.time():
            raise InvalidTokenError("token expired")
        if claims["iat"] < self.not_before:
            raise InvalidTokenError("token revoked")

    def revoke_all(self) -> None:
        self.not_before = time.time()
