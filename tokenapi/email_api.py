"""The email-token API (``/api/v1/tokens``): register, status, regenerate, reset, revoke.

Registration answers the same ``202`` whether or not the address already has a token, so the API
cannot be used to find out who has an account.  The token (or reset code) and its mail are written
in one transaction and the mail is sent at once: if that send fails, everything the registration
wrote is taken back and the answer is 503; if the process dies first, the queued mail is sent by
the background sender (``tokenapi.mailqueue``).  Either way every mailed token works.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import secrets

from aiohttp import web

from . import inputs, mailqueue, tokens
from .clientip import client_ip
from .errors import InvalidInput, NotFound
from .keys import api_state_key, config_key, mailer_key, recorder_key, store_key, validator_key
from .mail import MailError, reset_message, welcome_message
from .store import Token, registration
from .store import mailqueue as queue
from .store.resets import Limited, redeem_reset_code
from .webauth import require_token
from .webio import ApiError, Endpoint, json_response, read_json, too_many
from .webio import iso as _iso

log = logging.getLogger(__name__)

EMAIL_TOKEN_NAME = "email"
REGISTERED = (
    "Check your inbox: we sent your token, or instructions to recover it if this address "
    "already has one."
)
INVALID_CODE = "Invalid or expired code"
RESET_CODE_TTL = 3600.0
RESET_MAX_ATTEMPTS = 5
# No 0/O, 1/I/L: codes are read from an email and typed by hand.
CODE_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
CODE_LEN = 8
_CODE_SEPARATORS = re.compile(r"[\s-]")


def new_reset_code() -> str:
    """Eight characters from an unambiguous alphabet."""
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LEN))


def reset_code_digest(user_id: str, code: str) -> str:
    """The stored form of a code, bound to its user."""
    return hashlib.sha256(f"{user_id}:{code}".encode()).hexdigest()


def token_json(token: Token, *, secret: str | None = None) -> dict[str, object]:
    """A token as the API shows it; the secret only when it has just been created."""
    out: dict[str, object] = {
        "id": token.id,
        "name": token.name,
        "kind": token.kind,
        "prefix": token.prefix,
        "created_at": _iso(token.created_at),
        "expires_at": _iso(token.expires_at),
        "scopes": list(token.scopes),
    }
    if secret is not None:
        out["token"] = secret
    return out


async def register(request: web.Request) -> web.Response:
    """Mail a new token, or a reset code when the address already has one."""
    body = await read_json(request, ("email", "language"))
    email = inputs.normalize_email(body.get("email"))
    language = inputs.language(body.get("language"))
    config = request.config_dict[config_key]
    state = request.config_dict[api_state_key]
    store = request.config_dict[store_key]
    retry = await state.register_ip.hit(store, client_ip(request, config.trusted_proxies))
    if retry is None:
        retry = await state.register_email.hit(store, email)
    if retry is not None:
        raise too_many(retry)
    mailer = request.config_dict[mailer_key]
    secret, code = tokens.generate(), new_reset_code()

    def welcome(to: str, lang: str) -> str:
        return mailqueue.serialize(welcome_message(config, to, lang, secret))

    def reset(to: str, lang: str) -> str:
        return mailqueue.serialize(reset_message(config, to, lang, code))

    # The token (or code) and its mail are written together; the mail is then sent at once.
    # In this process one registration per address runs at a time; across processes the
    # store's unique indexes serialise them (see tokenapi.store.registration).
    async with state.lock(f"register:{email}"):
        done = await registration.register(
            store,
            email,
            language=language,
            language_given=body.get("language") is not None,
            token_name=EMAIL_TOKEN_NAME,
            digest=tokens.digest(secret),
            prefix=tokens.display_prefix(secret),
            welcome=welcome,
            reset=reset,
            code_digest=lambda user_id: reset_code_digest(user_id, code),
            code_ttl=RESET_CODE_TTL,
            lease=mailqueue.lease_for(config.smtp_timeout),
        )
        try:
            await mailer.send(mailqueue.parse(done.message))
        except MailError:
            if await asyncio.shield(registration.undo(store, done)):
                raise
            # Our lease ran out and another sender delivered it meanwhile: it went out.
        else:
            await asyncio.shield(queue.delete(store, done.mail_id))
    return json_response({"message": REGISTERED}, 202)


async def status(request: web.Request) -> web.Response:
    """The presented token with its last use, overall and per ecosystem."""
    token = await require_token(request)
    recorder = request.config_dict[recorder_key]
    usage = await recorder.usage(token.id)
    # The cached token may predate flushed uses; the store row has the flushed time.
    stored = await request.config_dict[store_key].get_token(token.id)
    stored_last = stored.last_used_at if stored is not None else token.last_used_at
    out = token_json(token)
    out["last_used_at"] = _iso(recorder.last_used_at(token.id, stored_last))
    out["usage"] = {
        u.ecosystem: {"requests": u.requests, "last_used_at": _iso(u.last_used_at)} for u in usage
    }
    return json_response(out)


async def regenerate(request: web.Request) -> web.Response:
    """Replace the presented token with a new one (same expiry and scopes); the old secret is
    dead at once."""
    token = await require_token(request)
    store = request.config_dict[store_key]
    state = request.config_dict[api_state_key]
    async with state.lock(f"token:{token.id}"):
        current = await store.get_token(token.id)
        if current is None or current.revoked_at is not None:
            raise ApiError(401, "Invalid or revoked token")
        secret = tokens.generate()
        new, old_digest = await store.replace_token(
            token.id,
            token.user_id,
            name=token.name,
            kind=token.kind,
            digest=tokens.digest(secret),
            prefix=tokens.display_prefix(secret),
            # The successor has the same reach: same expiry, same scopes.
            expires_at=current.expires_at,
            scopes=current.scopes,
        )
    if old_digest is not None:
        request.config_dict[validator_key].forget(old_digest)
    return json_response(token_json(new, secret=secret))


async def reset(request: web.Request) -> web.Response:
    """Trade a mailed reset code for a new email token."""
    body = await read_json(request, ("email", "code"))
    raw_code = body.get("code")
    if not isinstance(raw_code, str) or not isinstance(body.get("email"), str):
        raise ApiError(400, "email and code are required strings")
    try:
        email = inputs.normalize_email(body["email"])
    except InvalidInput:
        raise ApiError(400, INVALID_CODE) from None
    code = _CODE_SEPARATORS.sub("", raw_code).upper()[:64]
    config = request.config_dict[config_key]
    store = request.config_dict[store_key]
    state = request.config_dict[api_state_key]
    retry = await state.reset_ip.hit(store, client_ip(request, config.trusted_proxies))
    if retry is not None:
        raise too_many(retry)
    secret = tokens.generate()
    limit = state.reset_email
    # Known address or not, the same store work (see tokenapi.store.resets).
    async with state.lock(f"register:{email}"):
        result = await redeem_reset_code(
            store,
            email,
            code,
            code_digest=reset_code_digest,
            max_attempts=RESET_MAX_ATTEMPTS,
            limit=(f"{limit.name}:{email}", limit.limit, limit.period),
            name=EMAIL_TOKEN_NAME,
            digest=tokens.digest(secret),
            prefix=tokens.display_prefix(secret),
        )
    if isinstance(result, Limited):
        raise too_many(result.retry_after)
    if result is None:
        raise ApiError(400, INVALID_CODE)
    if result.old_digest is not None:
        request.config_dict[validator_key].forget(result.old_digest)
    return json_response(token_json(result.token, secret=secret))


async def revoke(request: web.Request) -> web.Response:
    """Revoke the presented token."""
    token = await require_token(request)
    store = request.config_dict[store_key]
    try:
        digest = await store.revoke_token(token.id)
    except NotFound:  # revoked by a concurrent request
        raise ApiError(401, "Invalid or revoked token") from None
    request.config_dict[validator_key].forget(digest)
    return json_response({"message": "Token revoked"})


# Every token answer carries its limits (SPEC 18).
TOKEN_LIMITS = {
    "expires_at": {
        "type": ["string", "null"],
        "format": "date-time",
        "description": "when the token stops working; null: never",
    },
    "scopes": {
        "type": "array",
        "items": {"type": "string", "enum": ["npm", "pypi"]},
        "description": "the registries the token works for",
    },
}
_TOKEN_RESULT = {
    "type": "object",
    "required": ["id", "name", "kind", "prefix", "created_at", "token"],
    "properties": {
        "id": {"type": "string", "format": "uuid"},
        "name": {"type": "string"},
        "kind": {"type": "string", "enum": ["email", "api"]},
        "prefix": {"type": "string"},
        "created_at": {"type": "string", "format": "date-time"},
        "token": {"type": "string", "description": "the new secret, shown only here"},
        **TOKEN_LIMITS,
    },
}

_USAGE = {
    "type": "object",
    "properties": {
        "requests": {"type": "integer"},
        "last_used_at": {"type": "string", "format": "date-time"},
    },
}

_BAD_AUTH = "Missing, unknown or revoked token"

ENDPOINTS = (
    Endpoint(
        "POST",
        "/v1/tokens",
        register,
        "Register an email address: mails a token, or a reset code if it has one",
        {
            202: "Mail sent (same answer whether or not the address has a token)",
            400: "Bad email, language or body",
            413: "Body too large",
            415: "Body is not JSON",
            429: "Too many registrations for this address or client IP",
            503: "The email could not be sent; nothing was changed",
        },
        body={
            "type": "object",
            "required": ["email"],
            "additionalProperties": False,
            "properties": {
                "email": {"type": "string", "format": "email", "maxLength": 254},
                "language": {"type": "string", "enum": list(inputs.LANGUAGES), "default": "en"},
            },
        },
        result={"type": "object", "properties": {"message": {"type": "string"}}},
        tag="email tokens",
    ),
    Endpoint(
        "GET",
        "/v1/tokens/status",
        status,
        "Status and usage of the presented token",
        {200: "Token status", 401: _BAD_AUTH},
        auth="bearer",
        result={
            "type": "object",
            "properties": {
                "id": {"type": "string", "format": "uuid"},
                "name": {"type": "string"},
                "kind": {"type": "string"},
                "prefix": {"type": "string"},
                "created_at": {"type": "string", "format": "date-time"},
                "last_used_at": {"type": ["string", "null"], "format": "date-time"},
                "usage": {"type": "object", "additionalProperties": _USAGE},
                **TOKEN_LIMITS,
            },
        },
        tag="email tokens",
    ),
    Endpoint(
        "POST",
        "/v1/tokens/regenerate",
        regenerate,
        "Replace the presented token with a new one",
        {200: "The new token", 401: _BAD_AUTH},
        auth="bearer",
        result=_TOKEN_RESULT,
        tag="email tokens",
    ),
    Endpoint(
        "POST",
        "/v1/tokens/reset",
        reset,
        "Trade a mailed reset code for a new email token",
        {
            200: "The new token",
            400: "Invalid or expired code, or a bad body",
            413: "Body too large",
            415: "Body is not JSON",
            429: "Too many attempts for this address or client IP",
        },
        body={
            "type": "object",
            "required": ["email", "code"],
            "additionalProperties": False,
            "properties": {
                "email": {"type": "string", "format": "email"},
                "code": {"type": "string", "minLength": CODE_LEN, "maxLength": CODE_LEN},
            },
        },
        result=_TOKEN_RESULT,
        tag="email tokens",
    ),
    Endpoint(
        "DELETE",
        "/v1/tokens",
        revoke,
        "Revoke the presented token",
        {200: "Token revoked", 401: _BAD_AUTH},
        auth="bearer",
        result={"type": "object", "properties": {"message": {"type": "string"}}},
        tag="email tokens",
    ),
)
