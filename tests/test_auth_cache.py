"""Verified tokens are remembered (a long-poll sends its token with every request),
without changing what is accepted or refused."""

from __future__ import annotations

import time

import jwt
import pytest

from pushsvc import auth as auth_module
from pushsvc.auth import Authenticator
from pushsvc.exceptions import Unauthorized
from pushsvc.settings import Settings

SECRET = "s" * 32


def test_a_token_verified_twice_is_one_principal() -> None:
    a = Authenticator((SECRET,), ())
    token = a.issue("alice", subscribe=["room:*"], ttl=60)
    first = a.verify(token)
    assert a.verify(token) is first
    assert first.can_subscribe("room:1") and not first.can_subscribe("other")


def test_a_remembered_token_still_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    a = Authenticator((SECRET,), ())
    token = a.issue("alice", ttl=5)
    a.verify(token)
    later = time.time() + 10
    monkeypatch.setattr(auth_module.time, "time", lambda: later)
    with pytest.raises(Unauthorized, match="expired"):
        a.verify(token)
    with pytest.raises(Unauthorized, match="expired"):
        a.verify(token)  # and it stays refused


def test_a_tampered_token_is_refused_after_the_genuine_one_was_remembered() -> None:
    a = Authenticator((SECRET,), ())
    token = a.issue("alice", ttl=60)
    a.verify(token)
    with pytest.raises(Unauthorized, match="invalid"):
        a.verify(token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1])


def test_the_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth_module, "VERIFIED_TOKENS", 8)
    a = Authenticator((SECRET,), ())
    tokens = [a.issue(f"u{i}", ttl=60) for i in range(20)]
    for t in tokens:
        a.verify(t)
    assert len(a._verified) == 8
    assert a.verify(tokens[0]).subject == "u0"  # forgotten, verified again


def test_a_remembered_jwt_expires_like_a_pushsvc_token(monkeypatch: pytest.MonkeyPatch) -> None:
    hmac_secret = "h" * 32
    a = Authenticator.from_settings(Settings(secrets=(SECRET,), jwt_key=hmac_secret))
    token = jwt.encode({"sub": "alice", "exp": int(time.time()) + 5}, hmac_secret, "HS256")
    first = a.verify(token)
    assert a.verify(token) is first
    later = time.time() + 10
    monkeypatch.setattr(auth_module.time, "time", lambda: later)
    with pytest.raises(Unauthorized, match="expired"):
        a.verify(token)  # the remembered principal has expired: verified again, refused
