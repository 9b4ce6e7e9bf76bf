"""What a test needs from the machine: skipped where it is missing on a developer's machine,
a failure under tests/run.sh and CI, which install everything (so no check is silently lost)."""

import os

import pytest

# Set by tests/run.sh; CI sets CI.
REQUIRE_ENV = "PKGATE_REQUIRE_TOOLS"


def required() -> bool:
    """Under tests/run.sh or CI (any ``CI`` value but empty, ``0`` or ``false``)."""
    ci = os.environ.get("CI", "").strip().lower()
    return bool(os.environ.get(REQUIRE_ENV)) or ci not in ("", "0", "false")


def require(present: object, what: str) -> None:
    """Skip (or, under run.sh and CI, fail) the calling test unless ``present`` is truthy."""
    if present:
        return
    message = f"{what} is not installed (tests/run.sh installs it)"
    if required():
        pytest.fail(message)
    pytest.skip(message)
