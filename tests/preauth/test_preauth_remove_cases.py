"""`imagetools preauth remove` against the spec-validating test server, in the cases its planning
and its DELETEs most easily get wrong: of two auth sets of ours, the one the server already lost
(404) counts as removed whichever of the two it is; an auth set of ours listed without an id fails
that identity alone (nothing of it removed, no traceback), even beside one that has an id.
(tests/preauth/test_preauth_remove.py covers the single-set forms.)"""

from __future__ import annotations

import json

import pytest
from support.mender_server import MenderTestServer, Reply

from imagetools import keys


def new_pem() -> str:
    return keys.public_pem(keys.generate(keys.KeySpec("ed25519"))).decode()


def write_preauth(path, identities: list[dict]) -> list[dict]:
    """A preauth file as `imagetools emit` writes it, a new key per identity."""
    entries = [
        {"name": f"unit{i}", "identity_data": identity, "pubkey": new_pem()} for i, identity in enumerate(identities)
    ]
    path.write_text(json.dumps(entries, indent=2))
    return entries


def deletes(server: MenderTestServer) -> list[int]:
    return [status for method, _path, status in server.log if method == "DELETE"]


class _LostMeanwhile(MenderTestServer):
    """Just before our DELETE of an auth set in `meanwhile` arrives, someone else removes it, as
    deviceauth would (the device goes with its last preauthorized set): ours then answers 404."""

    meanwhile: frozenset[str] = frozenset()

    def _delete(self, parts: list[str]) -> Reply:
        if len(parts) == 3 and parts[2] in self.meanwhile:
            super()._delete(parts)
        return super()._delete(parts)


@pytest.mark.parametrize("lost", [0, 1])
def test_of_two_auth_sets_of_ours_the_one_answering_404_counts_as_removed(cli, tmp_path, lost):
    first = write_preauth(tmp_path / "a.json", [{"mac": "02:00:00:00:04:01"}])
    second = write_preauth(tmp_path / "b.json", [{"mac": "02:00:00:00:04:01"}])  # re-emitted, another key
    with _LostMeanwhile() as srv:
        device = srv.seed_device(first[0]["identity_data"], first[0]["pubkey"])
        srv.add_auth_set(device, second[0]["pubkey"], "preauthorized")
        ids = [s["id"] for s in srv.devices[device]["auth_sets"]]
        srv.meanwhile = frozenset({ids[lost]})
        result = cli(
            "preauth",
            "remove",
            "a.json",
            "b.json",
            "--json",
            env={"MENDER_SERVER_URL": srv.url, "MENDER_TOKEN": "test-pat", "IMAGETOOLS_BACKOFF": "0.01"},
        )
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        [item] = report["items"]
        assert item["outcome"] == "removed" and item["auth_sets"] == ids
        assert f"auth set {ids[lost]} already gone (HTTP 404)" in item["detail"]
        assert f"auth set {ids[1 - lost]} already gone" not in item["detail"]
        assert report["summary"]["removed"] == 1 and report["summary"]["not-found"] == 0
        assert deletes(srv) == ([404, 204] if lost == 0 else [204, 404])
        assert not srv.devices and srv.violations == []


def test_an_auth_set_of_ours_without_an_id_fails_its_identity_even_beside_one_with_an_id(cli, env, mender, tmp_path):
    entries = write_preauth(tmp_path / "a.json", [{"mac": "02:00:00:00:05:01"}, {"mac": "02:00:00:00:05:02"}])
    again = write_preauth(tmp_path / "b.json", [{"mac": "02:00:00:00:05:01"}])  # the first one re-emitted
    damaged = mender.seed_device(entries[0]["identity_data"], entries[0]["pubkey"])
    mender.add_auth_set(damaged, again[0]["pubkey"], "preauthorized")
    kept = mender.devices[damaged]["auth_sets"][0]["id"]
    del mender.devices[damaged]["auth_sets"][1]["id"]  # optional in the spec's AuthSet
    fine = mender.seed_device(entries[1]["identity_data"], entries[1]["pubkey"])
    result = cli("preauth", "remove", "a.json", "b.json", "--json", env=env)
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "lists an auth set of ours without an id" in result.stderr
    items = {tuple(sorted(r["identity"].items())): r for r in json.loads(result.stdout)["items"]}
    bad = items[(("mac", "02:00:00:00:05:01"),)]
    assert bad["outcome"] == "failed" and bad["auth_sets"] == [] and f"auth set {kept}" in bad["detail"]
    assert items[(("mac", "02:00:00:00:05:02"),)]["outcome"] == "removed"
    assert [s.get("id") for s in mender.devices[damaged]["auth_sets"]] == [kept, None]  # nothing of it removed
    assert fine not in mender.devices and deletes(mender) == [204]
