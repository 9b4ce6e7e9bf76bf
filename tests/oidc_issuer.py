"""A local OIDC issuer on loopback: its own RSA and EC keys, a discovery document and a JWKS.

It signs ID tokens shaped like a CI platform's (GitHub Actions claims by default) and can rotate
its keys; it counts the JWKS fetches it answers.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from yarl import URL

from tests.conftest import serve_app

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
RUNNER_TOKEN = "runner-request-token"  # what GitHub puts in ACTIONS_ID_TOKEN_REQUEST_TOKEN


@dataclass
class SigningKey:
    kid: str
    alg: str
    private: PrivateKey

    def jwk(self) -> dict[str, Any]:
        public = self.private.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            data = RSAAlgorithm.to_jwk(public, as_dict=True)
        else:
            data = ECAlgorithm.to_jwk(public, as_dict=True)
        return {**data, "kid": self.kid, "alg": self.alg, "use": "sig"}


def rsa_key(kid: str) -> SigningKey:
    return SigningKey(kid, "RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048))


def ec_key(kid: str) -> SigningKey:
    return SigningKey(kid, "ES256", ec.generate_private_key(ec.SECP256R1()))


@dataclass
class Issuer:
    url: URL = URL()
    keys: list[SigningKey] = field(default_factory=lambda: [rsa_key("rsa-1"), ec_key("ec-1")])
    jwks_fetches: int = 0
    discovery_fetches: int = 0

    @property
    def issuer(self) -> str:
        return str(self.url)

    def key(self, kid: str) -> SigningKey:
        return next(k for k in self.keys if k.kid == kid)

    def claims(self, audience: str, **extra: Any) -> dict[str, Any]:
        """GitHub-Actions-shaped claims, valid for five minutes from now."""
        now = int(time.time())
        base: dict[str, Any] = {
            "iss": self.issuer,
            "aud": audience,
            "sub": "repo:my-org/app:ref:refs/heads/main",
            "repository": "my-org/app",
            "repository_owner": "my-org",
            "ref": "refs/heads/main",
            "run_id": "123",
            "workflow": "ci",
            "iat": now,
            "nbf": now,
            "exp": now + 300,
        }
        base.update(extra)
        return {k: v for k, v in base.items() if v is not None}

    def sign(
        self, claims: dict[str, Any], kid: str = "rsa-1", headers: dict[str, Any] | None = None
    ) -> str:
        key = self.key(kid)
        return jwt.encode(
            claims, key.private, algorithm=key.alg, headers={"kid": kid, **(headers or {})}
        )

    def rotate(self) -> SigningKey:
        """Replace every key by a new RSA key (as an issuer does at rotation time)."""
        new = rsa_key(f"rsa-{len(self.keys) + 10}")
        self.keys = [new]
        return new

    def app(self) -> web.Application:
        async def discovery(request: web.Request) -> web.Response:
            self.discovery_fetches += 1
            doc = {
                "issuer": self.issuer,
                "jwks_uri": f"{self.issuer}/keys",
                "id_token_signing_alg_values_supported": ["RS256", "ES256"],
            }
            return web.json_response(doc)

        async def keys(request: web.Request) -> web.Response:
            self.jwks_fetches += 1
            return web.Response(
                text=json.dumps({"keys": [k.jwk() for k in self.keys]}),
                content_type="application/json",
            )

        async def github_token(request: web.Request) -> web.Response:
            """GitHub Actions' ID token request: the runner's bearer token, ``audience=``."""
            if request.headers.get("Authorization") != f"bearer {RUNNER_TOKEN}":
                return web.json_response({"message": "bad credentials"}, status=401)
            audience = request.query.get("audience", "")
            return web.json_response({"count": 1, "value": self.sign(self.claims(audience))})

        app = web.Application()
        app.router.add_get("/github-token", github_token)
        app.router.add_get("/.well-known/openid-configuration", discovery)
        app.router.add_get("/keys", keys)
        return app


@asynccontextmanager
async def serve_issuer() -> AsyncIterator[Issuer]:
    issuer = Issuer()
    runner, url = await serve_app(issuer.app())
    issuer.url = url
    try:
        yield issuer
    finally:
        await runner.cleanup()
