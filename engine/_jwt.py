"""JwtHooks: authentication by JSON Web Tokens (RFC 7519), verified with PyJWT.

    hooks = JwtHooks.from_secret(Path("secret").read_bytes(), audience="plait")
    async with Engine(hooks=hooks) as engine: ...

The token is `hello.token` (spec §4.2), the `?token=` of a y-websocket URL (§13), or the
`Authorization: Bearer` of an HTTP session (§14.1); a `refresh` frame brings a fresh one (§5.9).

What a token must be:
- Signed by the configured key with one of the algorithms the key's type allows: HS256/384/512
  for a secret (of at least 32/48/64 bytes: RFC 7518 §3.2); RS/PS 256/384/512 for an RSA public key; ES256/384/512 for an EC key (the one
  its curve names); EdDSA for an Ed25519/Ed448 key. `none` is never allowed, and an HS token is
  refused when the key is a public key (algorithm confusion: the public key is no secret).
  `algorithms` narrows that list, never widens it. A JWKS file holds public keys; the token's
  header `kid` picks one (a set of one key needs no `kid`).
- `sub`: a string of 1..256 characters; it becomes the identity's "id".
- `exp`: required unless `require_exp=False`. An expired token is refused; a session is asked
  for a fresh token before `exp` and closed TOKEN_EXPIRED (4012) at `exp` if it sent none
  (spec §5.9, `Hooks.expires_at`). `nbf` and `iat`, when present, are checked too.
- `aud` / `iss`: checked against `audience` / `issuer` when given (a token with an `aud` is
  refused when no audience is configured: PyJWT's rule, and the safe one).

Claims that grant something:
- `name` (optional): a string of at most 256 characters, the identity's "name" (presence shows
  it to the room).
- `rooms` (optional): an object mapping room-name patterns to access, e.g.
  `{"doc:*": "write", "doc:archive-*": "read", "lobby": "comment", "doc:secret": "none"}`.
  Patterns are fnmatch-style (`*`, `?`, `[seq]`; case-sensitive). Access is "read", "comment"
  (publish events, not edit), "write", or "none" (no access). When several patterns match a
  room, the most specific wins, whatever their order in the token (JSON objects are unordered,
  and issuers reorder keys): an exact name (no wildcard) first; then the pattern with the most
  characters other than `*` and `?`; on a tie, the least access. No match: no access.
  At most 256 patterns of 1..256 characters.
- A token without `rooms` grants `default_access` in every room: None (no access, FORBIDDEN)
  unless configured. Access is given by the issuer, never assumed: an operator who wants
  "any signed-in user may edit any room" says so (`default_access=Access.WRITE`,
  `plait serve --jwt-default-access write`).

The grants are not put in the identity, which every member of a room sees (presence, spec
§5.4): the identity is {"id", "name"?, "grants"?}, where "grants" is an opaque name (a keyed
digest) of the token's `rooms` claim, which the JwtHooks keeps. Any problem with a token, however hostile
(garbage, a lone surrogate, 100 KiB, a `rooms` of the wrong shape) is `Unauthenticated` with a
reason, never an exception of another kind.

Custom hooks take precedence: subclass JwtHooks (override `authorize` to consult your own
database, call `super().authenticate(...)` and add to the identity), or compose it (keep one and
delegate `authenticate`/`expires_at` to it from your own Hooks).
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import json
import secrets
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from plait.protocol import MAX_TOKEN, Access

from ._hooks import ACCESS_BY_NAME, MAX_IDENTITY_ID, Hooks, Identity, Unauthenticated

HMAC_ALGORITHMS: Final = ("HS256", "HS384", "HS512")
RSA_ALGORITHMS: Final = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
EDDSA_ALGORITHMS: Final = ("EdDSA",)
_EC_ALGORITHMS: Final = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
_JWK_EC_ALGORITHMS: Final = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}

MIN_SECRET_BYTES: Final = 32
"""RFC 7518 §3.2: an HS256 key of at least 256 bits. Shorter secrets are refused at start."""
MAX_NAME: Final = 256
MAX_ROOM_PATTERNS: Final = 256
MAX_PATTERN: Final = 256
MAX_GRANT_SETS: Final = 10_000
"""Distinct `rooms` claims remembered (least recently used dropped first): the identity names
its grants by digest, so that other members never see them (see the module docstring)."""

ACCESS_NAMES: Final[Mapping[str, Access | None]] = ACCESS_BY_NAME
_RANK: Final = {None: 0, Access.READ: 1, Access.COMMENT: 2, Access.WRITE: 3}
_GRANTS_KEY: Final = "grants"


class JwtKeyError(ValueError):
    """A key, key file or algorithm that cannot verify tokens (raised when JwtHooks is made)."""


@dataclass(frozen=True, slots=True)
class _Key:
    key: Any
    algorithms: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RoomGrants:
    """A token's `rooms` claim, checked, with its patterns most specific first."""

    exact: Mapping[str, Access | None]
    patterns: tuple[tuple[str, Access | None], ...]

    def access(self, room: str) -> Access | None:
        """The access the most specific matching pattern gives (module docstring), or None."""
        if room in self.exact:
            return self.exact[room]
        for pattern, access in self.patterns:
            if fnmatch.fnmatchcase(room, pattern):
                return access
        return None


def _specificity(item: tuple[str, Access | None]) -> tuple[int, int]:
    pattern, access = item
    return (-sum(c not in "*?" for c in pattern), _RANK[access])


def parse_rooms(claim: object) -> RoomGrants:
    """Check a `rooms` claim (module docstring) and order it for lookup.

    Raises:
        Unauthenticated: the claim is not an object of at most 256 patterns (strings of 1..256
            characters) to "read", "comment", "write" or "none".
    """
    shape = 'the "rooms" claim must be an object mapping room patterns to "read", "comment", "write" or "none"'
    if not isinstance(claim, dict) or len(claim) > MAX_ROOM_PATTERNS:
        raise Unauthenticated(shape + f" (at most {MAX_ROOM_PATTERNS})")
    exact: dict[str, Access | None] = {}
    patterns: list[tuple[str, Access | None]] = []
    for pattern, name in claim.items():
        if not isinstance(pattern, str) or not 1 <= len(pattern) <= MAX_PATTERN or not isinstance(name, str) or name not in ACCESS_NAMES:
            raise Unauthenticated(shape)
        access = ACCESS_NAMES[name]
        if any(c in pattern for c in "*?["):
            patterns.append((pattern, access))
        else:
            exact[pattern] = access
    patterns.sort(key=_specificity)
    return RoomGrants(exact, tuple(patterns))


def _algorithms_for_public_key(key: object) -> tuple[str, ...]:
    if isinstance(key, rsa.RSAPublicKey):
        return RSA_ALGORITHMS
    if isinstance(key, ec.EllipticCurvePublicKey):
        algorithm = _EC_ALGORITHMS.get(key.curve.name)
        if algorithm is None:
            raise JwtKeyError(f"EC curve {key.curve.name} is not one JWT uses (P-256, P-384, P-521)")
        return (algorithm,)
    if isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        return EDDSA_ALGORITHMS
    raise JwtKeyError(f"a {type(key).__name__} cannot verify JWTs (RSA, EC or Ed25519/Ed448 public keys can)")


def _narrow(allowed: tuple[str, ...], wanted: Sequence[str] | None, what: str) -> tuple[str, ...]:
    if wanted is None:
        return allowed
    wanted = tuple(wanted)
    wrong = [a for a in wanted if a not in allowed]
    if wrong or not wanted:
        raise JwtKeyError(f"algorithm {', '.join(wrong) or '(none)'} does not go with {what} (it allows {', '.join(allowed)})")
    return wanted


class JwtHooks(Hooks):
    """Hooks that authenticate JSON Web Tokens and authorise rooms by their `rooms` claim.

    Make one with `from_secret`, `from_public_key_pem` or `from_jwks` (or their `*_file`
    forms); the rules are in this module's docstring.

    Args:
        keys: the verifying keys by `kid` (None: the one key of a secret or PEM).
        audience: the `aud` a token must name, or None (then a token with an `aud` is refused).
        issuer: the `iss` a token must have, or None (not checked).
        default_access: what a token without a `rooms` claim grants in every room (None: none).
        require_exp: refuse tokens without `exp` (the default): a token that never expires
            cannot be taken back.
        leeway: seconds of clock skew allowed when checking `exp`, `nbf` and `iat`.
    """

    def __init__(
        self,
        keys: Mapping[str | None, _Key],
        *,
        audience: str | None = None,
        issuer: str | None = None,
        default_access: Access | None = None,
        require_exp: bool = True,
        leeway: float = 0.0,
    ) -> None:
        super().__init__()
        if not keys:
            raise JwtKeyError("no key to verify tokens with")
        self._keys = dict(keys)
        self.audience = audience
        self.issuer = issuer
        self.default_access = default_access
        self.require_exp = require_exp
        self.leeway = leeway
        self._grants: OrderedDict[str, RoomGrants] = OrderedDict()
        self._grants_key = secrets.token_bytes(32)
        self._last: tuple[str, dict[str, Any]] | None = None
        """The token `authenticate` verified last, and its claims: the engine asks
        `expires_at` about it next, and a signature need not be checked twice."""

    # -- making one -----------------------------------------------------------------------------

    @classmethod
    def from_secret(cls, secret: bytes | str, *, algorithms: Sequence[str] | None = None, **options: Any) -> JwtHooks:
        """HS256/384/512 with a shared secret of at least 32, 48, 64 bytes (`algorithms` narrows).

        Raises:
            JwtKeyError: the secret is too short, or an algorithm is not an HS one.
        """
        raw = secret.encode() if isinstance(secret, str) else bytes(secret)
        if len(raw) < MIN_SECRET_BYTES:
            raise JwtKeyError(f"the secret is {len(raw)} bytes; HS algorithms need at least {MIN_SECRET_BYTES} (RFC 7518 §3.2)")
        if raw.lstrip().startswith(b"-----BEGIN"):
            raise JwtKeyError("the secret is a PEM key: use a public key (--jwt-public-key), not a secret")
        # RFC 7518 §3.2: a key at least as long as the hash; a 32-byte secret is HS256 only.
        allowed = tuple(a for a in HMAC_ALGORITHMS if len(raw) * 8 >= int(a[2:]))
        return cls({None: _Key(raw, _narrow(allowed, algorithms, f"a secret of {len(raw)} bytes"))}, **options)

    @classmethod
    def from_secret_file(cls, path: str | Path, **options: Any) -> JwtHooks:
        """`from_secret` with the file's bytes, less a trailing newline (an editor's)."""
        return cls.from_secret(_read(path).rstrip(b"\r\n"), **options)

    @classmethod
    def from_public_key_pem(cls, pem: bytes, *, algorithms: Sequence[str] | None = None, **options: Any) -> JwtHooks:
        """An RSA, EC or Ed25519/Ed448 public key in PEM (`-----BEGIN PUBLIC KEY-----`).

        Raises:
            JwtKeyError: not a PEM public key of a JWT type, or an algorithm it does not allow.
        """
        try:
            key = load_pem_public_key(pem)
        except (ValueError, TypeError):
            raise JwtKeyError("not a PEM public key (-----BEGIN PUBLIC KEY-----); a private key or certificate will not do") from None
        return cls({None: _Key(key, _narrow(_algorithms_for_public_key(key), algorithms, "this key"))}, **options)

    @classmethod
    def from_public_key_file(cls, path: str | Path, **options: Any) -> JwtHooks:
        return cls.from_public_key_pem(_read(path), **options)

    @classmethod
    def from_jwks(cls, text: str | bytes, *, algorithms: Sequence[str] | None = None, **options: Any) -> JwtHooks:
        """A JSON Web Key Set (`{"keys": [...]}`, RFC 7517 §5) of public keys (RSA, EC,
        OKP). A key's `alg`, when present, is the only algorithm it verifies; else its type
        says (as for a PEM key). With several keys, each needs a distinct `kid`.

        Raises:
            JwtKeyError: not a JWKS, a key that is not a public key of a JWT type, a private or
                symmetric key, duplicate or missing `kid`s.
        """
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise JwtKeyError(f"not JSON: {exc}") from None
        if not isinstance(data, dict) or not isinstance(data.get("keys"), list) or not data["keys"]:
            raise JwtKeyError('not a JWKS: expected {"keys": [...]} with at least one key')
        keys: dict[str | None, _Key] = {}
        for index, jwk in enumerate(data["keys"]):
            where = f"key {index}"
            if not isinstance(jwk, dict):
                raise JwtKeyError(f"{where} is not an object")
            kid = jwk.get("kid")
            if kid is not None and not isinstance(kid, str):
                raise JwtKeyError(f"{where}: kid is not a string")
            where = f"key {kid!r}" if kid is not None else where
            kty = jwk.get("kty")
            if kty not in ("RSA", "EC", "OKP"):
                raise JwtKeyError(f"{where}: kty {kty!r} is not a public key type (RSA, EC, OKP); symmetric keys do not belong in a JWKS")
            if "d" in jwk:
                raise JwtKeyError(f"{where} is a private key: publish only public keys")
            allowed: tuple[str, ...]
            if kty == "RSA":
                allowed = RSA_ALGORITHMS
            elif kty == "EC":
                alg = _JWK_EC_ALGORITHMS.get(jwk.get("crv"))  # type: ignore[arg-type]
                if alg is None:
                    raise JwtKeyError(f"{where}: curve {jwk.get('crv')!r} is not one JWT uses")
                allowed = (alg,)
            else:
                allowed = EDDSA_ALGORITHMS
            if "alg" in jwk:
                allowed = _narrow(allowed, [jwk["alg"]] if isinstance(jwk["alg"], str) else [], where)
            allowed = _narrow(allowed, algorithms, where) if algorithms is not None else allowed
            try:
                key = jwt.PyJWK(jwk, allowed[0]).key
            except jwt.PyJWTError as exc:
                raise JwtKeyError(f"{where}: {exc}") from None
            if kid in keys:
                raise JwtKeyError(f"two keys with kid {kid!r}")
            keys[kid] = _Key(key, allowed)
        if len(keys) > 1 and None in keys:
            raise JwtKeyError("a JWKS of several keys needs a kid on every key")
        return cls(keys, **options)

    @classmethod
    def from_jwks_file(cls, path: str | Path, **options: Any) -> JwtHooks:
        return cls.from_jwks(_read(path), **options)

    # -- hooks ----------------------------------------------------------------------------------

    def claims(self, token: str | None) -> dict[str, Any]:
        """The token's verified claims (signature, algorithm, `exp`, `nbf`, `iat`, `aud`,
        `iss`, a `sub` string): what subclasses build on.

        Raises:
            Unauthenticated: the token is missing or is not one this server accepts.
        """
        if token is None:
            raise Unauthenticated("a token is required")
        if not isinstance(token, str) or len(token) > MAX_TOKEN or not token.isascii():
            raise Unauthenticated("not a JWT")  # compact JWTs are base64url and dots
        key = self._key_for(token)
        required = ["exp", "sub"] if self.require_exp else ["sub"]
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=list(key.algorithms),
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": required},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("token expired") from None
        except jwt.InvalidAlgorithmError:
            raise Unauthenticated(f"token algorithm not allowed (this server accepts {', '.join(key.algorithms)})") from None
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"token refused: {_short(exc)}") from None
        sub = claims.get("sub")
        if not isinstance(sub, str) or not 1 <= len(sub) <= MAX_IDENTITY_ID:
            raise Unauthenticated(f'the "sub" claim must be a string of 1..{MAX_IDENTITY_ID} characters')
        exp = claims.get("exp")
        if exp is not None and (isinstance(exp, bool) or not isinstance(exp, (int, float))):
            raise Unauthenticated('the "exp" claim must be a number')
        return claims

    def _key_for(self, token: str) -> _Key:
        if len(self._keys) == 1:
            return next(iter(self._keys.values()))
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"token refused: {_short(exc)}") from None
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise Unauthenticated("the token names no key (kid)")
        key = self._keys.get(kid)
        if key is None:
            raise Unauthenticated("the token's key (kid) is not one this server knows")
        return key

    async def authenticate(self, token: str | None, client: dict[str, Any]) -> Identity:
        """{"id": sub, "name": name (if the token has one), "grants": a digest naming its
        `rooms` claim (if it has one)}. Raises Unauthenticated (module docstring)."""
        claims = self.claims(token)
        assert token is not None
        self._last = (token, claims)
        identity: Identity = {"id": claims["sub"]}
        name = claims.get("name")
        if name is not None:
            if not isinstance(name, str) or len(name) > MAX_NAME:
                raise Unauthenticated(f'the "name" claim must be a string of at most {MAX_NAME} characters')
            identity["name"] = name
        if "rooms" in claims:
            identity[_GRANTS_KEY] = self._remember(parse_rooms(claims["rooms"]), claims["rooms"])
        return identity

    async def expires_at(self, token: str | None, identity: Identity) -> float | None:
        """The token's `exp` (unix seconds), or None if it has none (only with
        require_exp=False)."""
        last = self._last
        claims = last[1] if last is not None and last[0] == token else self.claims(token)
        exp = claims.get("exp")
        return float(exp) if exp is not None else None

    async def authorize(self, identity: Identity, room: str) -> Access | None:
        """What the token's `rooms` claim grants in `room` (the most specific pattern), or
        `default_access` for a token without one."""
        digest = identity.get(_GRANTS_KEY)
        if digest is None:
            return self.default_access
        grants = self._grants.get(digest) if isinstance(digest, str) else None
        if grants is None:  # forgotten (MAX_GRANT_SETS), or an identity JwtHooks did not make
            return None
        self._grants.move_to_end(digest)
        return grants.access(room)

    def _remember(self, grants: RoomGrants, claim: object) -> str:
        # Keyed: members who see the identity learn nothing of the claim from its name.
        canonical = json.dumps(claim, sort_keys=True, ensure_ascii=True).encode()
        digest = hmac.new(self._grants_key, canonical, hashlib.sha256).hexdigest()[:24]
        self._grants[digest] = grants
        self._grants.move_to_end(digest)
        while len(self._grants) > MAX_GRANT_SETS:
            self._grants.popitem(last=False)
        return digest


def _read(path: str | Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise JwtKeyError(exc.strerror or str(exc)) from None


def _short(exc: Exception) -> str:
    return (str(exc) or type(exc).__name__)[:200]
