"""Taking our preauthorizations off the server (imagetools.preauth.remove) in process against the
spec-validating test server: every plan and outcome with its exact detail, partial failures, 404s
and what aborts the run."""

from __future__ import annotations

import hashlib
import re

import pytest
from support.mender_server import DEVICES, MenderTestServer, Reply

from imagetools import keys
from imagetools.errors import AuthError, ServerError, UsageError
from imagetools.preauth.remove import (
    Removal,
    RemoveResult,
    Target,
    removal_targets,
    remove,
    summarize_removals,
)
from imagetools.preauth.units import Unit
from imagetools.server import BadResponse, MenderClient, ServerSettings

MAC = {"mac": "02:00:00:00:00:01"}


def _key():
    return keys.generate(keys.KeySpec("ed25519")).public_key()


def _pem(key) -> str:
    return keys.public_pem(key).decode()


def _short(pem: str) -> str:
    return keys.fingerprint(keys.load_public(pem.encode(), "k"))[:16] + "…"


def _client(server: MenderTestServer) -> MenderClient:
    return MenderClient(ServerSettings(server.url, token="test-pat", token_source="test", retries=0, backoff=0.01))


def _remove(server: MenderTestServer, targets: list[Target], **kw) -> list[RemoveResult]:
    with _client(server) as client:
        return remove(client, targets, **kw)


def _sets(server: MenderTestServer, device_id: str) -> list[dict]:
    return server.devices[device_id]["auth_sets"]


def _text(auth_set: dict) -> str:
    return f"auth set {auth_set['id']} ({auth_set['status']}, key {_short(auth_set['pubkey'])})"


def _deletes(server: MenderTestServer) -> list[tuple[str, int]]:
    return [(path, status) for method, path, status in server.log if method == "DELETE"]


# --- targets --------------------------------------------------------------------------------------


def test_targets_merge_the_keys_of_an_identity_in_order():
    first, second, third = _key(), _key(), _key()
    units = [
        Unit("a", {"mac": "aa", "sn": "1"}, first),
        Unit("b", {"mac": "bb"}, second),
        Unit("a2", {"sn": "1", "mac": "aa"}, third),
    ]
    alone = {"mac": "cc"}
    targets = removal_targets(units, [{"mac": "bb"}, alone, {"mac": "cc"}])
    assert [(t.identity, t.keys, t.name, t.fingerprints) for t in targets] == [
        ({"mac": "aa", "sn": "1"}, (first, third), "a", ()),
        ({"mac": "bb"}, (second,), "b", ()),
        ({"mac": "cc"}, (), None, ()),
    ]
    assert targets[2].identity is not alone
    assert removal_targets([], []) == []


def test_a_target_is_keyed_by_keys_or_fingerprints():
    assert Target(MAC).keyed is False
    assert Target(MAC, (_key(),)).keyed is True
    assert Target(MAC, fingerprints=("ab",)).keyed is True
    assert "keys" not in repr(Target(MAC, (_key(),)))


def test_nothing_to_remove_is_refused(mender):
    with _client(mender) as client, pytest.raises(UsageError) as refused:
        remove(client, [])
    assert str(refused.value) == "nothing to remove: give a preauth file, an emit OUT directory or --identity JSON"
    assert mender.log == []


def test_a_result_takes_its_outcome_by_name():
    result = RemoveResult(MAC, "u1", "not-found")  # type: ignore[arg-type]
    assert result.outcome is Removal.NOT_FOUND
    assert result.to_dict() == {
        "identity": MAC,
        "name": "u1",
        "outcome": "not-found",
        "detail": "",
        "device_id": None,
        "auth_sets": [],
        "decommission": False,
    }
    assert [o.value for o in Removal] == ["removed", "not-found", "refused", "failed", "would-remove"]


def test_summaries_count_every_outcome_under_its_word():
    results = [RemoveResult(MAC, None, o) for o in ("removed", "removed", "not-found", "failed", "would-remove")]
    assert summarize_removals(results) == {"removed": 2, "not-found": 1, "refused": 0, "failed": 1}
    assert summarize_removals(results, dry_run=True) == {"would-remove": 1, "not-found": 1, "refused": 0, "failed": 1}
    assert list(summarize_removals([])) == ["removed", "not-found", "refused", "failed"]


# --- plans ----------------------------------------------------------------------------------------


def test_a_dry_run_plans_our_auth_sets_and_removes_nothing(mender):
    key, again = _key(), _key()
    device_id = mender.seed_device(MAC, _pem(key), "preauthorized")
    mender.add_auth_set(device_id, _pem(again), "accepted")
    mender.add_auth_set(device_id, _pem(_key()), "pending")
    ours = _sets(mender, device_id)[:2]
    [plan] = _remove(mender, [Target(MAC, (key, again), "u1")], dry_run=True)
    assert (plan.identity, plan.name, plan.outcome, plan.device_id, plan.decommission) == (
        MAC,
        "u1",
        Removal.WOULD_REMOVE,
        device_id,
        False,
    )
    assert plan.auth_sets == [s["id"] for s in ours]
    assert plan.detail == f"{_text(ours[0])}, {_text(ours[1])}"
    assert _deletes(mender) == [] and len(_sets(mender, device_id)) == 3


def test_an_identity_the_server_does_not_have_is_not_found(mender):
    for decommission in (False, True):
        [result] = _remove(mender, [Target(MAC, (_key(),), "u1")], decommission=decommission)
        assert (result.outcome, result.detail, result.device_id, result.auth_sets, result.decommission) == (
            Removal.NOT_FOUND,
            "no device with this identity on the server",
            None,
            [],
            decommission,
        )
    assert _deletes(mender) == []


def test_a_device_holding_nothing_of_ours_is_left_alone(mender):
    device_id = mender.seed_device(MAC, _pem(_key()), "pending")
    [keyed] = _remove(mender, [Target(MAC, (_key(),))])
    [alone] = _remove(mender, [Target(MAC)], decommission=True)
    [by_fp] = _remove(mender, [Target(MAC, fingerprints=("0" * 64,))])
    listed = _text(_sets(mender, device_id)[0])
    assert (keyed.outcome, keyed.device_id) == (Removal.NOT_FOUND, device_id)
    assert keyed.detail == f"device {device_id} holds no auth set of ours ({listed})"
    assert by_fp.detail == keyed.detail
    assert (alone.outcome, alone.decommission) == (Removal.NOT_FOUND, True)
    assert alone.detail == (
        f"device {device_id} holds no auth set of ours ({listed}; for an identity given on its own only "
        "preauthorized ones are ours)"
    )
    assert _deletes(mender) == []


def test_a_device_in_use_by_a_stranger_says_so(mender):
    device_id = mender.seed_device(MAC, _pem(_key()), "accepted")
    [result] = _remove(mender, [Target(MAC, (_key(),))], force=True)
    assert result.outcome == Removal.NOT_FOUND
    assert result.detail == (
        f"device {device_id} holds no auth set of ours ({_text(_sets(mender, device_id)[0])}); "
        "it is accepted with a key we do not know: in use, left alone"
    )


def test_a_device_without_auth_sets_holds_none(mender):
    device_id = mender.seed_device(MAC, _pem(_key()), "preauthorized")
    mender.devices[device_id]["auth_sets"] = []
    [result] = _remove(mender, [Target(MAC, (_key(),))])
    assert (result.outcome, result.detail) == (
        Removal.NOT_FOUND,
        f"device {device_id} holds no auth set of ours (none)",
    )
    del mender.devices[device_id]["auth_sets"]  # optional in the spec's Device
    [result] = _remove(mender, [Target(MAC)])
    assert result.detail == (
        f"device {device_id} holds no auth set of ours (none; for an identity given on its own only "
        "preauthorized ones are ours)"
    )


def test_a_stranger_accepted_beside_our_key_is_refused_unless_forced(mender):
    key = _key()
    device_id = mender.seed_device(MAC, _pem(key), "preauthorized")
    stranger = _pem(_key())
    mender.add_auth_set(device_id, stranger, "accepted")
    results = [_remove(mender, [Target(MAC, (key,))], decommission=d, dry_run=True)[0] for d in (False, True)]
    assert [(r.outcome, r.auth_sets) for r in results] == [(Removal.REFUSED, [])] * 2
    assert results[0].detail == (
        f"device {device_id} is accepted with a key we do not know ({_short(stranger)}): it is in use; "
        "--force removes our auth sets anyway"
    )
    assert results[1].detail == (
        f"device {device_id} is accepted with a key we do not know ({_short(stranger)}): it is in use; "
        "--force decommissions it anyway"
    )
    ours = _sets(mender, device_id)[0]
    [forced] = _remove(mender, [Target(MAC, (key,), "u1")], force=True)
    assert (forced.outcome, forced.auth_sets, forced.detail) == (Removal.REMOVED, [ours["id"]], _text(ours))
    assert [s["pubkey"] for s in _sets(mender, device_id)] == [stranger]


def test_for_an_identity_alone_only_preauthorized_sets_are_ours(mender):
    device_id = mender.seed_device(MAC, _pem(_key()), "preauthorized")
    mender.add_auth_set(device_id, _pem(_key()), "pending")
    first, pending = _sets(mender, device_id)
    [result] = _remove(mender, [Target(MAC)])
    assert (result.outcome, result.auth_sets, result.detail) == (Removal.REMOVED, [first["id"]], _text(first))
    assert [s["id"] for s in _sets(mender, device_id)] == [pending["id"]]


def test_a_key_named_by_its_fingerprint_is_ours_whatever_its_status(mender):
    key = _key()
    device_id = mender.seed_device(MAC, _pem(key), "accepted")
    fingerprint = hashlib.sha256(keys.spki_der(key)).hexdigest()
    listed = list(_sets(mender, device_id))
    [result] = _remove(mender, [Target(MAC, fingerprints=("f" * 64, fingerprint))])
    assert (result.outcome, result.auth_sets) == (Removal.REMOVED, [f"{listed[0]['id']}"])
    assert _sets(mender, device_id) == []


def test_decommission_removes_the_device_holding_our_key(mender):
    key = _key()
    device_id = mender.seed_device(MAC, _pem(key), "accepted")
    mender.add_auth_set(device_id, _pem(_key()), "pending")
    listed = ", ".join(_text(s) for s in _sets(mender, device_id))
    heard: list[RemoveResult] = []
    [result] = _remove(mender, [Target(MAC, (key,), "u1")], decommission=True, progress=heard.append, jobs=0)
    assert (result.outcome, result.device_id, result.auth_sets, result.decommission) == (
        Removal.REMOVED,
        device_id,
        [],
        True,
    )
    assert result.detail == f"device {device_id} with {listed}"
    assert heard == [result]
    assert device_id not in mender.devices and _deletes(mender) == [(f"{DEVICES}/{device_id}", 204)]


def test_an_auth_set_of_ours_without_an_id_fails_that_target(mender):
    key = _key()
    device_id = mender.seed_device(MAC, _pem(key), "preauthorized")
    del _sets(mender, device_id)[0]["id"]
    [result] = _remove(mender, [Target(MAC, (key,))])
    assert (result.outcome, result.auth_sets) == (Removal.FAILED, [])
    assert result.detail == (
        f"device {device_id}: the server lists an auth set of ours without an id, so it cannot be removed "
        f"(auth set ? (preauthorized, key {_short(_pem(key))}))"
    )
    [decommissioned] = _remove(mender, [Target(MAC, (key,))], decommission=True)  # needs the device's id only
    assert decommissioned.outcome == Removal.REMOVED and device_id not in mender.devices


# --- carrying out ---------------------------------------------------------------------------------


def _two_of_ours(mender: MenderTestServer, more: int = 0) -> tuple[Target, str, list[dict]]:
    """A device accepted with one key of ours, and preauthorized with another (and `more` others)."""
    first, *others = [_key() for _ in range(2 + more)]
    device_id = mender.seed_device(MAC, _pem(first), "accepted")
    for key in others:
        mender.add_auth_set(device_id, _pem(key), "preauthorized")
    return Target(MAC, (first, *others), "u1"), device_id, list(_sets(mender, device_id))


def test_a_refused_delete_fails_the_target_and_names_what_was_removed_before(mender):
    target, device_id, sets = _two_of_ours(mender)
    mender.fail_next(500, prefix=f"{DEVICES}/{device_id}/auth/{sets[1]['id']}")
    [result] = _remove(mender, [target])
    assert result.outcome == Removal.FAILED and result.auth_sets == [s["id"] for s in sets]
    assert result.detail.startswith(f"remove auth set {sets[1]['id']} of device {device_id} (tried 1 time): HTTP 500")
    assert result.detail.endswith(f") (auth set {sets[0]['id']} removed before)")


def test_a_refused_third_delete_names_both_removed_before(mender):
    target, device_id, sets = _two_of_ours(mender, more=1)
    mender.fail_next(500, prefix=f"{DEVICES}/{device_id}/auth/{sets[2]['id']}")
    [result] = _remove(mender, [target])
    assert result.outcome == Removal.FAILED
    assert result.detail.endswith(f") (auth set {sets[0]['id']}, auth set {sets[1]['id']} removed before)")


def test_a_refused_first_delete_names_nothing_removed_before(mender):
    target, device_id, sets = _two_of_ours(mender)
    mender.fail_next(500, prefix=f"{DEVICES}/{device_id}/auth/{sets[0]['id']}")
    [result] = _remove(mender, [target])
    assert result.outcome == Removal.FAILED
    assert result.detail.startswith(f"remove auth set {sets[0]['id']} of device {device_id} (tried 1 time): HTTP 500")
    assert re.fullmatch(r".*: HTTP 500: service unavailable \(request_id [0-9a-f-]{36}\)", result.detail)
    assert [s["id"] for s in _sets(mender, device_id)] == [s["id"] for s in sets]  # stopped at the first


class _Gone(MenderTestServer):
    """Answers a DELETE of an auth set in `gone` with 404, as if someone removed it meanwhile."""

    gone: frozenset[str] = frozenset()

    def _delete(self, parts: list[str]) -> Reply:
        if parts[-1] in self.gone:
            return Reply(404, {"error": "authentication set not found"})
        return super()._delete(parts)


def test_a_404_counts_as_removed_and_all_404_as_not_found():
    with _Gone() as srv:
        target, device_id, sets = _two_of_ours(srv)
        srv.gone = frozenset({sets[0]["id"]})
        [some] = _remove(srv, [target])
        planned = f"{_text(sets[0])}, {_text(sets[1])}"
        assert (some.outcome, some.detail) == (
            Removal.REMOVED,
            f"{planned}; auth set {sets[0]['id']} already gone (HTTP 404)",
        )
        target, device_id, sets = _two_of_ours(srv, more=1)
        srv.gone = frozenset({sets[0]["id"], sets[2]["id"]})
        [two] = _remove(srv, [target])
        planned = ", ".join(_text(s) for s in sets)
        assert (two.outcome, two.detail) == (
            Removal.REMOVED,
            f"{planned}; auth set {sets[0]['id']}, auth set {sets[2]['id']} already gone (HTTP 404)",
        )
        target, device_id, sets = _two_of_ours(srv)
        srv.gone = frozenset(s["id"] for s in sets)
        [none] = _remove(srv, [target])
        planned = f"{_text(sets[0])}, {_text(sets[1])}"
        assert (none.outcome, none.detail, none.auth_sets) == (
            Removal.NOT_FOUND,
            f"{planned}: already gone (HTTP 404)",
            [s["id"] for s in sets],
        )
        assert srv.violations == []


def test_a_decommission_answered_404_is_not_found():
    with _Gone() as srv:
        key = _key()
        device_id = srv.seed_device(MAC, _pem(key), "accepted")
        srv.gone = frozenset({device_id})
        [result] = _remove(srv, [Target(MAC, (key,))], decommission=True)
        assert (result.outcome, result.detail) == (
            Removal.NOT_FOUND,
            f"device {device_id} with {_text(_sets(srv, device_id)[0])}: already gone (HTTP 404)",
        )


def test_several_targets_keep_their_order_and_each_its_own_outcome(mender):
    keys_ = [_key() for _ in range(3)]
    identities = [{"mac": f"m{i}"} for i in range(3)]
    for identity, key in zip(identities[:2], keys_):
        mender.seed_device(identity, _pem(key), "preauthorized")
    targets = [Target(i, (k,), f"u{n}") for n, (i, k) in enumerate(zip(identities, keys_))]
    results = _remove(mender, targets, jobs=2)
    assert [(r.name, r.outcome) for r in results] == [
        ("u0", Removal.REMOVED),
        ("u1", Removal.REMOVED),
        ("u2", Removal.NOT_FOUND),
    ]
    assert mender.devices == {}


def test_refused_credentials_on_a_delete_abort_the_run(mender):
    target, device_id, sets = _two_of_ours(mender)
    mender.fail_next(401, prefix=f"{DEVICES}/{device_id}/auth/")
    with pytest.raises(AuthError):
        _remove(mender, [target])
    assert len(_sets(mender, device_id)) == 2


class _Answers200(MenderTestServer):
    def _delete(self, parts: list[str]) -> Reply:
        return Reply(200, {"ok": True})


def test_an_answer_breaking_the_api_aborts_the_run():
    with _Answers200() as srv:
        key = _key()
        srv.seed_device(MAC, _pem(key), "preauthorized")
        with pytest.raises(BadResponse) as broken:
            _remove(srv, [Target(MAC, (key,))])
        assert isinstance(broken.value, ServerError) and "204" in str(broken.value)
        srv.take_violations()
