"""Preauthorizing units (imagetools.preauth.push) in process against the spec-validating test
server: every outcome with its exact detail, the refusals before any request, and what aborts."""

from __future__ import annotations

import pytest
from support.mender_server import ADMISSION, DEVICES, MenderTestServer, Reply

from imagetools import keys
from imagetools.errors import AuthError, ServerError, UsageError
from imagetools.preauth import push as push_module
from imagetools.preauth.push import Outcome, PushResult, push, summarize
from imagetools.preauth.units import Unit
from imagetools.server import MenderClient, ServerSettings


def _unit(number: int) -> Unit:
    return Unit(
        f"u{number}", {"mac": f"02:00:00:00:00:{number:02x}"}, keys.generate(keys.KeySpec("ed25519")).public_key()
    )


def _other_pem() -> str:
    return keys.public_pem(keys.generate(keys.KeySpec("ed25519"))).decode()


def _client(server: MenderTestServer, token: str = "test-pat") -> MenderClient:
    return MenderClient(ServerSettings(server.url, token=token, token_source="test", retries=0, backoff=0.01))


def _short(pem: str) -> str:
    return keys.fingerprint(keys.load_public(pem.encode(), "k"))[:16] + "…"


def test_push_preauthorizes_and_a_rerun_finds_our_key_already_there(mender):
    units = [_unit(1), _unit(2)]
    heard: list[PushResult] = []
    with _client(mender) as client:
        first = push(client, units, jobs=1, progress=heard.append)
        again = push(client, units)
    ids = {d["identity_data"]["mac"]: d["id"] for d in mender.devices.values()}
    assert [(r.name, r.outcome, r.detail, r.device_id, r.device_status) for r in first] == [
        (u.name, Outcome.PREAUTHORIZED, "", ids[u.identity["mac"]], "preauthorized") for u in units
    ]
    assert [(r.identity, r.fingerprint) for r in first] == [(u.identity, u.fingerprint) for u in units]
    assert heard == first
    assert [(r.outcome, r.detail, r.device_id, r.device_status) for r in again] == [
        (Outcome.ALREADY, "same key already preauthorized", ids[u.identity["mac"]], "preauthorized") for u in units
    ]
    assert summarize(first + again) == {"preauthorized": 2, "already": 2, "conflict": 0, "failed": 0}
    assert list(summarize([])) == ["preauthorized", "already", "conflict", "failed"]


def test_our_key_accepted_counts_as_already(mender):
    unit = _unit(1)
    device_id = mender.seed_device(unit.identity, unit.pem, "accepted")
    with _client(mender) as client:
        [result] = push(client, [unit])
    assert (result.outcome, result.detail, result.device_id, result.device_status) == (
        Outcome.ALREADY,
        "same key already accepted",
        device_id,
        "accepted",
    )


def test_our_key_pending_beside_an_accepted_one_of_ours_is_already(mender):
    unit = _unit(1)
    device_id = mender.seed_device(unit.identity, unit.pem, "pending")
    mender.add_auth_set(device_id, unit.pem, "accepted")
    with _client(mender) as client:
        [result] = push(client, [unit])
    assert (result.outcome, result.detail) == (Outcome.ALREADY, "same key already accepted")


def test_our_key_in_another_state_is_a_conflict_that_says_what_to_do(mender):
    unit = _unit(1)
    device_id = mender.seed_device(unit.identity, _other_pem(), "accepted")
    mender.add_auth_set(device_id, unit.pem, "rejected")
    mender.add_auth_set(device_id, unit.pem, "pending")
    with _client(mender) as client:
        [result] = push(client, [unit])
    assert (result.outcome, result.device_id, result.device_status) == (Outcome.CONFLICT, device_id, "accepted")
    assert result.detail == (
        f"our key is on device {device_id} but its auth set is rejected; "
        "accept it on the server or push again with --force"
    )


def test_another_key_is_a_conflict_naming_every_key_and_force_replaces_it(mender):
    unit = _unit(1)
    first, second = _other_pem(), _other_pem()
    device_id = mender.seed_device(unit.identity, first, "accepted")
    mender.add_auth_set(device_id, second, "pending")
    with _client(mender) as client:
        [result] = push(client, [unit])
        assert (result.outcome, result.device_id, result.device_status) == (Outcome.CONFLICT, device_id, "accepted")
        assert result.detail == (
            f"device {device_id} (accepted) already has this identity with a different key "
            f"({_short(first)}, {_short(second)}); push with --force to replace it"
        )
        [forced] = push(client, [unit], force=True)
    assert (forced.outcome, forced.detail, forced.device_id, forced.device_status) == (
        Outcome.PREAUTHORIZED,
        "forced",
        device_id,
        "preauthorized",
    )
    assert mender.devices[device_id]["auth_sets"][0]["pubkey"] == unit.pem


class _TakenWithoutSets(MenderTestServer):
    """Legacy admission: answers every POST with 409 while listing no admission set."""

    def _admit(self, data: dict) -> Reply:
        return Reply(409, {"error": "device already exists"})


def test_a_conflict_the_server_says_nothing_about_is_named_as_unknown():
    unit = _unit(1)
    with _TakenWithoutSets() as srv, _client(srv) as client:
        [result] = push(client, [unit], api="v1")
        assert srv.violations == []
    assert (result.outcome, result.device_id, result.device_status) == (Outcome.CONFLICT, None, None)
    assert result.detail == (
        "device ? (unknown status) already has this identity with a different key (none readable); "
        "push with --force to replace it"
    )


def test_the_legacy_api_preauthorizes_without_a_device_id(mender):
    units = [_unit(1), _unit(2)]
    with _client(mender) as client:
        results = push(client, units, api="v1", jobs=0)
    assert [(r.outcome, r.detail, r.device_id, r.device_status) for r in results] == [
        (Outcome.PREAUTHORIZED, "admission v1", None, "preauthorized")
    ] * 2
    assert mender.requests_to("POST", ADMISSION) == [201, 201]


def test_force_needs_an_api_that_has_it(mender):
    with _client(mender) as client, pytest.raises(UsageError) as refused:
        push(client, [_unit(1)], force=True, api="v1")
    assert str(refused.value) == "--force needs the v2 API; the legacy admission API has no force flag"
    assert mender.log == []


def test_a_dry_run_says_what_it_would_post_and_needs_no_server():
    units = [_unit(1), _unit(2)]
    results = push(None, units, dry_run=True)
    assert [(r.name, r.identity, r.fingerprint, r.outcome, r.detail) for r in results] == [
        (u.name, u.identity, u.fingerprint, Outcome.DRY_RUN, "would POST deviceauth v2") for u in units
    ]
    assert [r.device_id for r in results] == [None, None]
    [forced] = push(None, units[:1], dry_run=True, force=True)
    assert forced.detail == "would POST deviceauth v2 with force"
    [legacy] = push(None, units[:1], dry_run=True, api="v1")
    assert legacy.detail == "would POST admission v1"


def test_a_dry_run_sends_nothing(mender):
    with _client(mender) as client:
        push(client, [_unit(1)], dry_run=True)
    assert mender.log == [] and mender.devices == {}


def test_without_a_server_only_a_dry_run_works():
    with pytest.raises(UsageError) as refused:
        push(None, [_unit(1)])
    assert str(refused.value) == "preauthorizing needs a server connection (only a dry run works without)"


def test_a_refusal_with_a_status_fails_that_unit_only(mender):
    units = [_unit(1), _unit(2)]
    mender.fail_next(500, prefix=DEVICES)
    with _client(mender) as client:
        failed, done = push(client, units, jobs=1)
    assert (failed.outcome, failed.device_id, failed.device_status) == (Outcome.FAILED, None, None)
    mac = units[0].identity["mac"]
    assert failed.detail.startswith(f'preauthorize {{"mac":"{mac}"}} (tried 1 time): HTTP 500: service unavailable')
    assert (failed.name, failed.identity, failed.fingerprint) == (
        units[0].name,
        units[0].identity,
        units[0].fingerprint,
    )
    assert done.outcome == Outcome.PREAUTHORIZED
    assert summarize([failed, done]) == {"preauthorized": 1, "already": 0, "conflict": 0, "failed": 1}


def test_refused_credentials_abort_the_run(mender):
    with _client(mender, token="wrong-token-0123") as client, pytest.raises(AuthError) as aborted:
        push(client, [_unit(1), _unit(2)], jobs=1)
    assert aborted.value.status == 401 and "wrong-token-0123" not in str(aborted.value)
    assert mender.devices == {}


def test_no_server_aborts_the_run():
    with MenderTestServer() as srv:
        url = srv.url
    with MenderClient(ServerSettings(url, token="test-pat", retries=0)) as client, pytest.raises(ServerError) as gone:
        push(client, [_unit(1)])
    assert gone.value.status is None


def test_a_result_takes_its_outcome_by_name():
    result = PushResult("u1", {"mac": "aa"}, "fp", "already")  # type: ignore[arg-type]
    assert result.outcome is Outcome.ALREADY
    assert result.to_dict() == {
        "name": "u1",
        "identity": {"mac": "aa"},
        "fingerprint": "fp",
        "outcome": "already",
        "detail": "",
        "device_id": None,
        "device_status": None,
    }
    with pytest.raises(ValueError):
        PushResult("u1", {}, "fp", "nonsense")  # type: ignore[arg-type]
    assert push_module.OUTCOMES == (Outcome.PREAUTHORIZED, Outcome.ALREADY, Outcome.CONFLICT, Outcome.FAILED)
    assert [o.value for o in Outcome] == ["preauthorized", "already", "conflict", "failed", "dry-run"]


def test_the_legacy_api_reports_the_status_of_the_admission_set_holding_our_key(mender):
    unit = _unit(1)
    identity = '{"mac":"02:00:00:00:00:01"}'
    for n, (pem, state) in enumerate(((_other_pem(), "accepted"), (unit.pem, "preauthorized"))):
        mender.admission.append(
            {
                "id": f"{n}" * 24,
                "device_id": "d" * 24,
                "device_identity": identity,
                "key": pem,
                "status": state,
                "attributes": unit.identity,
                "request_time": "2026-11-22T03:00:00Z",
            }
        )
    with _client(mender) as client:
        [result] = push(client, [unit], api="v1")
    assert (result.outcome, result.detail, result.device_id, result.device_status) == (
        Outcome.ALREADY,
        "same key already preauthorized",
        "d" * 24,
        "preauthorized",
    )
