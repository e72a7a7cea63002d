from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pcapd.core.config import Config, GeneralConfig, SecurityConfig, parse_config
from pcapd.core.request import RequestError, decode_body, parse_request
from pcapd.core.secret import Secret
from pcapd.dedup import RecentIds
from pcapd.signing import canonical, sign, signature, verify
from tests.helpers import RedisServer
from tests.pcapd.daemon_fixture import Daemon, Results

KEY = "s3cr3t-key-value"
NOW = 1_700_000_000.0
SECURITY = SecurityConfig(keys={"ops": Secret(KEY)}, require_signed=True, max_skew=300)
REQUEST: dict[str, Any] = {
    "id": "req-1",
    "node": "any",
    "interface": ["lo"],
    "bpf": "host 10.200.0.1",
    "packets": 10,
    "customer": "Zürich",
}


def _nested(depth: int) -> list[Any]:
    """A list `depth` lists deep: deeper than json.dumps can write."""
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


def replay_cache(security: SecurityConfig = SECURITY) -> RecentIds:
    return RecentIds(2 * security.max_skew + 1, clock=lambda: NOW)


def rejected(fields: dict[str, Any], security: SecurityConfig = SECURITY, now: float = NOW) -> str:
    with pytest.raises(RequestError) as info:
        verify(fields, security, now, replay_cache(security))
    message = str(info.value)
    assert KEY not in message
    return message


def test_good_signature_verifies() -> None:
    signed = sign(REQUEST, "ops", Secret(KEY), NOW)
    assert signed["ts"] == int(NOW) and signed["kid"] == "ops"
    assert len(signed["sig"]) == 64
    assert {k: v for k, v in signed.items() if k not in ("ts", "kid", "sig")} == REQUEST
    verify(signed, SECURITY, NOW + 10, replay_cache())


def test_signed_body_survives_the_wire_and_parse_request() -> None:
    signed = sign(REQUEST, "ops", Secret(KEY), NOW)
    body = json.dumps(signed, indent=2).encode()  # any spacing, any order
    fields = decode_body(body, 65536)
    verify(fields, SECURITY, NOW, replay_cache())
    request = parse_request(body, Config(general=GeneralConfig(node="web1")))
    assert (request.ts, request.kid, request.sig) == (int(NOW), "ops", signed["sig"])
    assert not request.warnings, "ts, kid and sig are known fields"


def test_canonical_form_ignores_key_order_and_spacing() -> None:
    reordered = dict(reversed(list(REQUEST.items())))
    assert canonical(reordered) == canonical(REQUEST)
    assert signature(reordered, Secret(KEY)) == signature(REQUEST, Secret(KEY))
    assert canonical({"b": 1, "a": [1, 2], "é": "ü"}) == '{"a":[1,2],"b":1,"é":"ü"}'.encode()
    assert canonical({"a": 1, "sig": "x"}) == b'{"a":1}', "sig is not signed"


def test_tampered_field_is_a_bad_signature() -> None:
    signed = sign(REQUEST, "ops", Secret(KEY), NOW)
    signed["bpf"] = "host 10.200.0.2"
    assert rejected(signed) == "sig: does not match the request signed with kid='ops'"


def test_wrong_key_is_a_bad_signature() -> None:
    signed = sign(REQUEST, "ops", Secret("another-key"), NOW)
    assert rejected(signed) == "sig: does not match the request signed with kid='ops'"


def test_missing_signature_when_required() -> None:
    message = rejected(dict(REQUEST))
    assert message == "sig: missing; this node accepts only signed requests (require_signed)"


def test_unsigned_request_passes_when_not_required() -> None:
    optional = SecurityConfig(keys={"ops": Secret(KEY)}, require_signed=False)
    verify(dict(REQUEST), optional, NOW, replay_cache(optional))


def test_signed_request_must_verify_even_when_not_required() -> None:
    optional = SecurityConfig(keys={"ops": Secret(KEY)}, require_signed=False)
    signed = sign(REQUEST, "ops", Secret("wrong"), NOW)
    assert "does not match" in rejected(signed, optional)


def test_unknown_kid() -> None:
    signed = sign(REQUEST, "other", Secret(KEY), NOW)
    assert rejected(signed) == 'kid="other": not a key in this node\'s [security] keys'


def test_missing_kid_and_missing_ts() -> None:
    signed = sign(REQUEST, "ops", Secret(KEY), NOW)
    assert rejected({k: v for k, v in signed.items() if k != "kid"}) == (
        "kid: missing; a signed request names its key in kid"
    )
    assert rejected({k: v for k, v in signed.items() if k != "ts"}) == (
        "ts: missing; a signed request carries ts (Unix seconds)"
    )


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("sig", "abc", 'sig: expected 64 hex digits (HMAC-SHA256), got "abc"'),
        ("sig", 42, "sig: expected 64 hex digits (HMAC-SHA256), got 42"),
        ("ts", "1700000000", 'ts: expected a JSON integer (Unix seconds), got "1700000000"'),
        ("ts", 1.7e9, "ts: expected a JSON integer (Unix seconds), got 1700000000.0"),
        ("kid", ["ops"], 'kid=["ops"]: not a key in this node\'s [security] keys'),
        # Quoted as every request field is (fields.show): cut, and said so...
        ("sig", "f" * 100, 'sig: expected 64 hex digits (HMAC-SHA256), got "' + "f" * 79 + "..."),
        # ... and named by its type where json cannot write it back.
        ("kid", _nested(100_000), "kid=<list>: not a key in this node's [security] keys"),
    ],
)
def test_malformed_signing_fields(field: str, value: Any, expected: str) -> None:
    signed = sign(REQUEST, "ops", Secret(KEY), NOW)
    signed[field] = value
    assert rejected(signed) == expected


def test_stale_request() -> None:
    signed = sign(REQUEST, "ops", Secret(KEY), NOW - 301)
    assert rejected(signed) == "ts=1699999699: 301 s old; the limit is max_skew=300 s"
    verify(sign(REQUEST, "ops", Secret(KEY), NOW - 300), SECURITY, NOW, replay_cache())


def test_request_from_the_future() -> None:
    signed = sign(REQUEST, "ops", Secret(KEY), NOW + 400)
    assert rejected(signed) == "ts=1700000400: 400 s in the future; the limit is max_skew=300 s"


def test_replayed_signature() -> None:
    replay = replay_cache()
    signed = sign(REQUEST, "ops", Secret(KEY), NOW)
    verify(signed, SECURITY, NOW, replay)
    with pytest.raises(RequestError) as info:
        verify(dict(signed), SECURITY, NOW + 1, replay)
    assert str(info.value) == "sig: replayed; this signature was already accepted within 601 s"
    assert info.value.request_id == "req-1"


def test_rejected_signature_is_not_remembered() -> None:
    replay = replay_cache()
    signed = sign(REQUEST, "ops", Secret(KEY), NOW)
    with pytest.raises(RequestError, match="old"):
        verify(signed, SECURITY, NOW + 1000, replay)
    assert len(replay) == 0


def test_error_carries_the_request_id() -> None:
    with pytest.raises(RequestError) as info:
        verify(dict(REQUEST), SECURITY, NOW, replay_cache())
    assert info.value.request_id == "req-1"


def test_secret_is_not_in_repr_of_config() -> None:
    assert KEY not in repr(SECURITY)


DOCS = Path(__file__).resolve().parents[2] / "docs" / "triggers.md"
DOC_KEY_PATH = "/etc/pcapd/keys/ops"


def documented_shell_recipe() -> str:
    """The fenced shell block under "Signing in shell" in docs/triggers.md."""
    section = DOCS.read_text().split("### Signing in shell (jq and openssl)\n", 1)[1]
    recipe = section.split("```sh\n", 1)[1].split("```", 1)[0]
    assert recipe.count(DOC_KEY_PATH) == 1 and "request.json" in recipe, recipe
    return recipe


def test_documented_shell_recipe_signs_what_the_daemon_accepts(
    tmp_path: Path, redis_srv: RedisServer, results: Results
) -> None:
    """Run the doc's jq/openssl/redis-cli recipe as written (only the key's
    path differs) against a daemon that accepts only signed requests."""
    keyfile = tmp_path / "ops.key"
    keyfile.write_text(KEY + "\n")
    daemon = Daemon(
        redis_srv, tmp_path / "daemon",
        extra_sections=f'[security]\nkeys = {{ ops = "file:{keyfile}" }}\nrequire_signed = true\n',
    )  # fmt: skip
    daemon.start()
    try:
        request = {**REQUEST, "id": "shell-signed", "node": "testnode", "timeout": 1}
        (tmp_path / "request.json").write_text(json.dumps(request, ensure_ascii=False))
        # `redis-cli` as the recipe calls it, pointed at this test's Redis; it
        # keeps a copy of what it was asked to publish.
        bindir = tmp_path / "bin"
        bindir.mkdir()
        published = tmp_path / "published.json"
        shim = bindir / "redis-cli"
        shim.write_text(
            f"#!/bin/sh\ntee {published} | exec {shutil.which('redis-cli')} "
            f'-p {redis_srv.port} "$@"\n'
        )
        shim.chmod(0o755)
        recipe = documented_shell_recipe().replace(DOC_KEY_PATH, str(keyfile))
        done = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", recipe], cwd=tmp_path,
            env={"PATH": f"{bindir}:/usr/bin:/bin"}, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "1", "one subscriber, the daemon, got it"
        fields = decode_body(published.read_bytes(), 65536)
        assert fields["sig"] == sign(request, "ops", Secret(KEY), fields["ts"])["sig"]
        event = results.for_id("shell-signed")
        assert (event["status"], event["error"]) == ("empty", None), event
        daemon.publish({**request, "id": "unsigned"})  # the same, unsigned: refused
        assert results.for_id("unsigned")["error"] == (
            "sig: missing; this node accepts only signed requests (require_signed)"
        )
    finally:
        daemon.stop()


def test_keys_from_file_and_environment_verify(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    keyfile = tmp_path / "ops.key"
    keyfile.write_text(KEY + "\n")
    monkeypatch.setenv("PCAPD_TEST_SIEM_KEY", "siem-key-value")
    config = parse_config(
        {
            "general": {"node": "web1"},
            "security": {
                "keys": {"ops": f"file:{keyfile}", "siem": "env:PCAPD_TEST_SIEM_KEY"},
                "require_signed": True,
            },
        }
    )
    security = config.security
    verify(sign(REQUEST, "ops", Secret(KEY), NOW), security, NOW, replay_cache(security))
    siem = sign(REQUEST, "siem", Secret("siem-key-value"), NOW)
    verify(siem, security, NOW, replay_cache(security))
    assert KEY not in repr(config) and "siem-key-value" not in repr(config)


json_scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@given(st.dictionaries(st.text(max_size=10), json_values, max_size=8), st.randoms())
def test_canonical_form_is_order_free_and_round_trips(fields: dict[str, Any], rnd: Any) -> None:
    items = list(fields.items())
    rnd.shuffle(items)
    assert canonical(dict(items)) == canonical(fields)
    assert json.loads(canonical(fields)) == {k: v for k, v in fields.items() if k != "sig"}
