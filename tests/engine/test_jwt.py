"""JwtHooks (engine/_jwt.py): what a token must be to get in, and what its claims grant.

Tokens are made with PyJWT (or by hand, for the attacks PyJWT refuses to make); keys are
generated once per module. The hooks are called directly: tests/engine/test_token_expiry.py
runs them inside an engine. Every refusal must be Unauthenticated, whatever the input.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from plait.engine import JwtHooks, JwtKeyError, Unauthenticated
from plait.engine._jwt import parse_rooms
from plait.protocol import Access

SECRET = b"0123456789abcdef" * 4  # 64 bytes: every HS algorithm
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
ED_KEY = ed25519.Ed25519PrivateKey.generate()


def pem(private: Any) -> bytes:
    return private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)  # type: ignore[no-any-return]


def claims(**extra: Any) -> dict[str, Any]:
    return {"sub": "ada", "exp": int(time.time()) + 600, **extra}


def hs(payload: dict[str, Any], key: bytes = SECRET, alg: str = "HS256", headers: dict[str, Any] | None = None) -> str:
    return jwt.encode(payload, key, algorithm=alg, headers=headers)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_made(header: dict[str, Any], payload: dict[str, Any], key: bytes) -> str:
    """An HS256 token signed with any bytes: what PyJWT will not make for an attacker."""
    signing = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    signature = hmac.new(key, signing.encode(), hashlib.sha256).digest()
    return f"{signing}.{b64(signature)}"


def authenticate(hooks: JwtHooks, token: str | None) -> dict[str, Any]:
    return trio.run(hooks.authenticate, token, {})


def refused(hooks: JwtHooks, token: str | None) -> str:
    """Why the token is refused (lower case)."""
    with pytest.raises(Unauthenticated) as caught:
        authenticate(hooks, token)
    return str(caught.value).lower()


def access(hooks: JwtHooks, identity: dict[str, Any], room: str) -> Access | None:
    return trio.run(hooks.authorize, identity, room)


# -- who gets in --------------------------------------------------------------------------------


def test_a_valid_token_gives_its_subject_and_name() -> None:
    hooks = JwtHooks.from_secret(SECRET)
    identity = authenticate(hooks, hs(claims(name="Ada Lovelace")))
    assert identity["id"] == "ada" and identity["name"] == "Ada Lovelace"
    assert set(identity) <= {"id", "name", "grants"}


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
def test_every_hs_algorithm_verifies_with_a_secret(alg: str) -> None:
    assert authenticate(JwtHooks.from_secret(SECRET), hs(claims(), alg=alg))["id"] == "ada"


@pytest.mark.parametrize(
    ("private", "alg"),
    [(RSA_KEY, "RS256"), (RSA_KEY, "PS384"), (EC_KEY, "ES256"), (ED_KEY, "EdDSA")],
    ids=["RS256", "PS384", "ES256", "EdDSA"],
)
def test_public_keys_verify_their_own_algorithms(private: Any, alg: str) -> None:
    hooks = JwtHooks.from_public_key_pem(pem(private))
    assert authenticate(hooks, jwt.encode(claims(), private, algorithm=alg))["id"] == "ada"


def test_an_expired_token_is_refused() -> None:
    assert refused(JwtHooks.from_secret(SECRET), hs(claims(exp=int(time.time()) - 5))) == "token expired"


def test_a_token_not_valid_yet_is_refused() -> None:
    assert "not yet valid" in refused(JwtHooks.from_secret(SECRET), hs(claims(nbf=int(time.time()) + 600)))


def test_a_token_signed_with_another_key_is_refused() -> None:
    assert "signature verification failed" in refused(JwtHooks.from_secret(SECRET), hs(claims(), key=b"x" * 40))
    other = ec.generate_private_key(ec.SECP256R1())
    hooks = JwtHooks.from_public_key_pem(pem(EC_KEY))
    assert "signature verification failed" in refused(hooks, jwt.encode(claims(), other, algorithm="ES256"))


def test_alg_none_is_never_accepted() -> None:
    unsigned = jwt.encode(claims(), None, algorithm="none")
    for hooks in (JwtHooks.from_secret(SECRET), JwtHooks.from_public_key_pem(pem(RSA_KEY))):
        assert "algorithm not allowed" in refused(hooks, unsigned)
        assert "algorithm not allowed" in refused(hooks, unsigned.rstrip(".") + ".")


@pytest.mark.parametrize("private", [RSA_KEY, EC_KEY, ED_KEY], ids=["RSA", "EC", "Ed25519"])
def test_an_hs_token_signed_with_the_public_key_is_refused(private: Any) -> None:
    """Algorithm confusion: the public key is public, so an HS256 token "signed" with it
    proves nothing. The allowed algorithms come from the key's type, never from the token."""
    hooks = JwtHooks.from_public_key_pem(pem(private))
    forged = hand_made({"alg": "HS256", "typ": "JWT"}, claims(sub="admin"), pem(private))
    assert "algorithm not allowed" in refused(hooks, forged)


def test_an_algorithm_of_another_key_type_is_refused() -> None:
    hooks = JwtHooks.from_public_key_pem(pem(EC_KEY))  # P-256: ES256 only
    other = ec.generate_private_key(ec.SECP384R1())
    assert "algorithm not allowed" in refused(hooks, jwt.encode(claims(), other, algorithm="ES384"))
    narrowed = JwtHooks.from_secret(SECRET, algorithms=["HS512"])
    assert "algorithm not allowed" in refused(narrowed, hs(claims(), alg="HS256"))
    assert authenticate(narrowed, hs(claims(), alg="HS512"))["id"] == "ada"


def test_audience_is_checked_when_configured() -> None:
    hooks = JwtHooks.from_secret(SECRET, audience="plait")
    assert authenticate(hooks, hs(claims(aud="plait")))["id"] == "ada"
    assert authenticate(hooks, hs(claims(aud=["other", "plait"])))["id"] == "ada"
    assert "audience" in refused(hooks, hs(claims(aud="billing")))
    assert "aud" in refused(hooks, hs(claims()))
    # A token meant for a particular audience is not taken by a server that names none.
    assert "audience" in refused(JwtHooks.from_secret(SECRET), hs(claims(aud="billing")))


def test_issuer_is_checked_when_configured() -> None:
    hooks = JwtHooks.from_secret(SECRET, issuer="https://login.example.com")
    assert authenticate(hooks, hs(claims(iss="https://login.example.com")))["id"] == "ada"
    assert "issuer" in refused(hooks, hs(claims(iss="https://evil.example.com")))
    assert "iss" in refused(hooks, hs(claims()))


@pytest.mark.parametrize("sub", [None, "", 42, ["ada"], "x" * 257], ids=["missing", "empty", "number", "list", "too-long"])
def test_the_subject_must_be_a_string(sub: Any) -> None:
    payload = claims()
    if sub is None:
        del payload["sub"]
    else:
        payload["sub"] = sub
    refused(JwtHooks.from_secret(SECRET), hs(payload))


def test_a_token_without_exp_is_refused_unless_the_operator_allows_it() -> None:
    payload = {"sub": "ada"}
    assert '"exp"' in refused(JwtHooks.from_secret(SECRET), hs(payload))
    lenient = JwtHooks.from_secret(SECRET, require_exp=False)
    identity = authenticate(lenient, hs(payload))
    assert trio.run(lenient.expires_at, hs(payload), identity) is None


def test_expires_at_is_the_exp_claim() -> None:
    hooks = JwtHooks.from_secret(SECRET)
    exp = int(time.time()) + 123
    token = hs(claims(exp=exp))
    assert trio.run(hooks.expires_at, token, authenticate(hooks, token)) == exp


@pytest.mark.parametrize("exp", ["tomorrow", True, None], ids=["string", "bool", "null"])
def test_an_exp_that_is_not_a_number_is_refused(exp: Any) -> None:
    refused(JwtHooks.from_secret(SECRET), hs(claims(exp=exp)))


@pytest.mark.parametrize("name", [42, "x" * 257, {"first": "Ada"}], ids=["number", "too-long", "map"])
def test_a_name_claim_of_the_wrong_shape_is_refused(name: Any) -> None:
    assert '"name"' in refused(JwtHooks.from_secret(SECRET), hs(claims(name=name)))


# -- hostile tokens ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "token",
    [None, "", ".", "..", "a.b.c", "not a jwt", "\udc80\udc81", "ü.ü.ü", "x" * 100_000, "e30.e30.", "e30." * 2000,
     b64(b"\xff\xfe") + "." + b64(b"{}") + ".", b64(b'{"alg":"HS256"}') + "." + b64(b"\xff\xfe\xfd") + ".AAAA",
     b64(b'{"alg":["HS256"]}') + "." + b64(b"{}") + ".AAAA", b64(b"[1,2]") + "." + b64(b"{}") + ".AAAA",
     b64(b'{"alg":"HS256","crit":[1]}') + "." + b64(b'{"sub":"a"}') + ".AAAA"],
    ids=lambda t: repr(t)[:24],
)
def test_garbage_tokens_are_refused_cleanly(token: str | None) -> None:
    refused(JwtHooks.from_secret(SECRET), token)


@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_any_text_is_refused_cleanly(text: str) -> None:
    refused(JwtHooks.from_secret(SECRET), text)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["alg", "kid", "typ", "crit", "b64", "x"]), json_values, max_size=4),
       st.dictionaries(st.sampled_from(["sub", "exp", "nbf", "iat", "aud", "iss", "name", "rooms"]), json_values, max_size=8))
def test_signed_tokens_with_hostile_claims_are_refused_or_accepted_never_crash(header: dict[str, Any], payload: dict[str, Any]) -> None:
    """Correctly signed, so the claims themselves are what is hostile: a bad one is refused
    with Unauthenticated, a good one accepted; nothing else escapes."""
    token = hand_made({**header, "alg": "HS256"}, payload, SECRET)
    hooks = JwtHooks.from_secret(SECRET, require_exp=False)
    try:
        identity = authenticate(hooks, token)
    except Unauthenticated:
        return
    assert isinstance(identity["id"], str)
    trio.run(hooks.authorize, identity, "room")
    trio.run(hooks.expires_at, token, identity)


@pytest.mark.parametrize(
    "rooms",
    [["doc:*"], "doc:*", 7, {"doc:*": "admin"}, {"doc:*": 2}, {"doc:*": None}, {"": "read"}, {"x" * 257: "read"},
     {f"r{i}": "read" for i in range(257)}, {"doc:*": ["write"]}],
    ids=["list", "string", "number", "unknown-access", "number-access", "null-access", "empty-pattern", "long-pattern",
         "too-many", "list-access"],
)
def test_a_rooms_claim_of_the_wrong_shape_is_refused(rooms: Any) -> None:
    assert '"rooms"' in refused(JwtHooks.from_secret(SECRET), hs(claims(rooms=rooms)))


# -- what a token grants --------------------------------------------------------------------------


def test_rooms_claim_most_specific_pattern_wins_whatever_the_order() -> None:
    hooks = JwtHooks.from_secret(SECRET)
    grants = {"doc:*": "write", "doc:archive-*": "read", "lobby": "comment", "doc:secret": "none", "*": "read"}
    for order in (grants, dict(reversed(list(grants.items())))):
        identity = authenticate(hooks, hs(claims(rooms=order)))
        assert access(hooks, identity, "doc:42") is Access.WRITE
        assert access(hooks, identity, "doc:archive-2019") is Access.READ
        assert access(hooks, identity, "lobby") is Access.COMMENT
        assert access(hooks, identity, "doc:secret") is None
        assert access(hooks, identity, "elsewhere") is Access.READ


def test_equally_specific_patterns_give_the_least_access() -> None:
    grants = parse_rooms({"doc:a*": "write", "doc:*b": "read"})
    assert grants.access("doc:ab") is Access.READ
    assert grants.access("doc:ax") is Access.WRITE


def test_a_room_no_pattern_matches_is_forbidden() -> None:
    hooks = JwtHooks.from_secret(SECRET)
    identity = authenticate(hooks, hs(claims(rooms={"doc:*": "write"})))
    assert access(hooks, identity, "admin") is None
    assert access(hooks, identity, "DOC:1") is None  # case-sensitive


def test_without_a_rooms_claim_the_default_access_applies() -> None:
    strict = JwtHooks.from_secret(SECRET)
    assert access(strict, authenticate(strict, hs(claims())), "doc:1") is None
    open_ = JwtHooks.from_secret(SECRET, default_access=Access.WRITE)
    assert access(open_, authenticate(open_, hs(claims())), "doc:1") is Access.WRITE


def test_the_grants_are_not_shown_in_the_identity() -> None:
    hooks = JwtHooks.from_secret(SECRET)
    identity = authenticate(hooks, hs(claims(rooms={"hr:salaries": "read"})))
    assert "hr:salaries" not in json.dumps(identity)
    # An identity JwtHooks did not make (or a forged grants name) grants nothing.
    assert access(hooks, {"id": "ada", "grants": "0" * 24}, "hr:salaries") is None


# -- keys -----------------------------------------------------------------------------------------


def test_a_short_secret_is_refused() -> None:
    with pytest.raises(JwtKeyError, match="at least 32"):
        JwtHooks.from_secret(b"short")
    with pytest.raises(JwtKeyError, match="does not go with a secret of 40 bytes"):
        JwtHooks.from_secret(b"x" * 40, algorithms=["HS384"])  # RFC 7518 §3.2: 48 bytes or more


def test_a_pem_key_is_not_a_secret() -> None:
    with pytest.raises(JwtKeyError, match="PEM"):
        JwtHooks.from_secret(pem(RSA_KEY))


def test_a_private_key_or_garbage_is_not_a_public_key(tmp_path: Path) -> None:
    private = RSA_KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    for data in (private, b"", b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", b"\xff" * 100):
        with pytest.raises(JwtKeyError, match="not a PEM public key"):
            JwtHooks.from_public_key_pem(data)
    with pytest.raises(JwtKeyError, match="No such file"):
        JwtHooks.from_public_key_file(tmp_path / "missing.pem")


def test_an_algorithm_that_does_not_go_with_the_key_is_refused_at_start() -> None:
    with pytest.raises(JwtKeyError, match="does not go with"):
        JwtHooks.from_secret(SECRET, algorithms=["RS256"])
    with pytest.raises(JwtKeyError, match="does not go with"):
        JwtHooks.from_public_key_pem(pem(RSA_KEY), algorithms=["HS256"])
    with pytest.raises(JwtKeyError, match="does not go with"):
        JwtHooks.from_public_key_pem(pem(RSA_KEY), algorithms=["none"])


def jwk(private: Any, kid: str | None, **extra: Any) -> dict[str, Any]:
    alg = {rsa.RSAPrivateKey: jwt.algorithms.RSAAlgorithm, ec.EllipticCurvePrivateKey: jwt.algorithms.ECAlgorithm}
    cls = next(c for t, c in alg.items() if isinstance(private, t))
    data: dict[str, Any] = json.loads(cls.to_jwk(private.public_key()))
    if kid is not None:
        data["kid"] = kid
    return {**data, **extra}


def test_a_jwks_picks_the_key_by_kid() -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    hooks = JwtHooks.from_jwks(json.dumps({"keys": [jwk(RSA_KEY, "r1"), jwk(EC_KEY, "e1")]}))
    assert authenticate(hooks, jwt.encode(claims(), RSA_KEY, algorithm="RS256", headers={"kid": "r1"}))["id"] == "ada"
    assert authenticate(hooks, jwt.encode(claims(), EC_KEY, algorithm="ES256", headers={"kid": "e1"}))["id"] == "ada"
    assert "kid" in refused(hooks, jwt.encode(claims(), RSA_KEY, algorithm="RS256"))
    assert "not one this server knows" in refused(hooks, jwt.encode(claims(), RSA_KEY, algorithm="RS256", headers={"kid": "r9"}))
    # The kid picks the key, and the key its algorithms: an ES token under an RSA key's kid fails.
    assert "algorithm not allowed" in refused(hooks, jwt.encode(claims(), EC_KEY, algorithm="ES256", headers={"kid": "r1"}))
    assert "signature" in refused(hooks, jwt.encode(claims(), other, algorithm="ES256", headers={"kid": "e1"}))
    forged = hand_made({"alg": "HS256", "kid": "r1"}, claims(), json.dumps(jwk(RSA_KEY, "r1")).encode())
    assert "algorithm not allowed" in refused(hooks, forged)


def test_a_jwk_alg_narrows_its_key() -> None:
    hooks = JwtHooks.from_jwks(json.dumps({"keys": [jwk(RSA_KEY, "r1", alg="PS256")]}))
    assert "algorithm not allowed" in refused(hooks, jwt.encode(claims(), RSA_KEY, algorithm="RS256"))
    assert authenticate(hooks, jwt.encode(claims(), RSA_KEY, algorithm="PS256"))["id"] == "ada"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("not json", "not JSON"),
        ("[]", "not a JWKS"),
        ('{"keys": []}', "not a JWKS"),
        ('{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}', "symmetric"),
        ('{"keys": [1]}', "not an object"),
        ('{"keys": [{"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}]}', "key 0"),
    ],
    ids=["not-json", "list", "empty", "oct", "not-object", "bad-point"],
)
def test_a_bad_jwks_is_refused_at_start(text: str, problem: str) -> None:
    with pytest.raises(JwtKeyError, match=problem):
        JwtHooks.from_jwks(text)


def test_a_jwks_with_a_private_key_or_duplicate_kids_is_refused() -> None:
    with pytest.raises(JwtKeyError, match="private"):
        JwtHooks.from_jwks(json.dumps({"keys": [jwk(EC_KEY, "e1", d="AAAA")]}))
    with pytest.raises(JwtKeyError, match="two keys"):
        JwtHooks.from_jwks(json.dumps({"keys": [jwk(EC_KEY, "e1"), jwk(RSA_KEY, "e1")]}))
    with pytest.raises(JwtKeyError, match="kid on every key"):
        JwtHooks.from_jwks(json.dumps({"keys": [jwk(EC_KEY, None), jwk(RSA_KEY, "r1")]}))


def test_a_server_without_jwt_auth_never_loads_pyjwt_or_cryptography() -> None:
    """They take ~8 MiB of every server's memory (bench/README.md): loaded only for JWT auth."""
    import subprocess
    import sys

    check = "import sys, plait.engine, plait.engine._cli; print(sorted(m for m in ('jwt', 'cryptography') if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True, timeout=60).stdout
    assert loaded.strip() == "[]"
    with_jwt = check.replace("plait.engine._cli;", "plait.engine._cli; plait.engine.JwtHooks;")
    loaded = subprocess.run([sys.executable, "-c", with_jwt], capture_output=True, text=True, check=True, timeout=60).stdout
    assert loaded.strip() == "['cryptography', 'jwt']"
