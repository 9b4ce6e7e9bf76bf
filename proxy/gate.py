"""The gate of a registry mount: the checks every registry route runs first, in order.

1. early answers, for requests that must be answered before authentication (npm's login
   requests get the advice on how to get a token, ``proxy.npm.login``);
2. the throttles (``proxy.ratelimit.Throttle.admit``): requests per address and per token;
3. authentication (``proxy.auth.Authenticator``): the token, resolved once, on the request;
4. the route; a refused guess (credentials pkgate never issued) is charged to the address's
   failure budget afterwards (``Throttle.guessed``), which may turn the 401 into a 429.

The gate wraps each route's handler (``RegistryGate.guard``) rather than being a middleware:
a middleware layer costs aiohttp a wrapper, a coroutine and a sub-application of its own on
every request of an install, and the checks always run together, in this order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from types import CoroutineType

from aiohttp import web

from .auth import Authenticator
from .errors import Handler, Step
from .keys import REQUEST_FACTS, RegistryFacts
from .ratelimit import Throttle

# An answer given before the throttles and authentication, or None to go on.
EarlyAnswer = Callable[[web.Request], web.Response | None]


class RegistryGate:
    """The checks of one registry mount; shared state is read from ``root``."""

    __slots__ = ("_authenticate", "_early", "_throttle", "ecosystem")

    def __init__(self, ecosystem: str, challenge: str, root: web.Application) -> None:
        self.ecosystem = ecosystem
        # Method -> the early answers for requests of that method.
        self._early: dict[str, list[EarlyAnswer]] = {}
        self._throttle = Throttle(root)
        self._authenticate = Authenticator(ecosystem, challenge, root)

    def answer_early(self, methods: Iterable[str], answer: EarlyAnswer) -> None:
        """Let ``answer`` answer requests of ``methods`` first (a route's setup calls this):
        the requests of an install (GETs) meet no early answer they do not need."""
        for method in methods:
            self._early.setdefault(method, []).append(answer)

    def guard(self, handler: Step) -> Handler:
        """``handler`` behind this gate (it may answer at once, or give an answer to await)."""
        ecosystem = self.ecosystem
        early = self._early
        throttle = self._throttle
        authenticate = self._authenticate

        async def gated(request: web.Request) -> web.StreamResponse:
            facts = request[REQUEST_FACTS] = RegistryFacts()
            facts.ecosystem = ecosystem
            answers = early.get(request.method)
            if answers is not None:
                for early_answer in answers:
                    answered = early_answer(request)
                    if answered is not None:
                        return answered
            refused = throttle.admit(request, facts)
            if refused is not None:
                return refused
            if not authenticate.accept_cached(facts):
                refused = await authenticate(request, facts)
                if refused is not None:
                    if facts.auth_failure == "invalid":
                        return throttle.guessed(facts) or refused
                    return refused
            step = handler(request)
            if isinstance(step, CoroutineType):  # a plain type: no ABCMeta check, unlike answers
                answer: web.StreamResponse = await step
                return answer
            return step  # type: ignore[return-value]  # not a coroutine: the answer (errors.Step)

        return gated
