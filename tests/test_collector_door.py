"""The collector's door: a result whose fields a script, a key or a path would choke on is
parked (a dead letter with the reason, acknowledged), and every other result keeps flowing
(docs/design.md, "Delivery guarantees"). In process, on the session's real Redis.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from convfarm.messages import record_id
from convfarm.runstate import RunStore
from tests.conftest import wait_for
from tests.inprocess import WORDS, FarmState, make_config, make_record, pending, push, unread

pytestmark = pytest.mark.fast


def settle(state: FarmState) -> None:
    client = state.client
    wait_for(lambda: pending(client) == 0 and unread(client) == 0, 20, "every entry acknowledged")


def test_a_negative_attempt_is_parked_and_the_batch_goes_on(farm_state: FarmState) -> None:
    info = farm_state.create_run()
    bad = make_record(info.run, WORDS[0], 0).model_copy(update={"attempt": -1, "id": record_id(info.run, WORDS[0], -1)})
    push(farm_state.client, [bad] + [make_record(info.run, w, 0) for w in WORDS])
    farm_state.start(farm_state.collector())
    wait_for(lambda: farm_state.store.status(info.run) == "complete", 20, "the run to complete")
    settle(farm_state)
    letters = farm_state.store.dead_letters.list(info.run)
    assert [(d["attempt"], "attempt -1 is out of range" in d["error"]) for d in letters] == [(-1, True)]
    assert sorted(farm_state.ids(info)) == sorted(record_id(info.run, w, 0) for w in WORDS)


def test_a_word_not_in_the_run_does_not_complete_it(farm_state: FarmState) -> None:
    info = farm_state.create_run()
    strangers = [make_record(info.run, f"stranger{i}", 0) for i in range(len(WORDS))]
    push(farm_state.client, [*strangers, make_record(info.run, WORDS[0], 0)])
    farm_state.start(farm_state.collector())
    settle(farm_state)
    assert farm_state.store.status(info.run) == "active"
    assert farm_state.store.words_done(info.run) == 1
    assert farm_state.ids(info) == [record_id(info.run, WORDS[0], 0)]
    letters = farm_state.store.dead_letters.list(info.run)
    assert len(letters) == len(WORDS) and all("not in the run's stored config" in d["error"] for d in letters)
    assert farm_state.store.dead_letters.words(info.run) == 0  # not words of the run: status counts none


def test_a_run_id_that_is_a_path_writes_nothing_outside_the_output_root(farm_state: FarmState, tmp_path: Path) -> None:
    info = farm_state.create_run()
    client = farm_state.client
    evil = "../../escaped"
    # the attacker even created the run's keys, as an enqueue would
    RunStore(client).create(evil, make_config("evil"), "")
    record = make_record(evil, WORDS[0], 0)
    push(client, [record, make_record(info.run, WORDS[0], 0)])
    farm_state.start(farm_state.collector())
    settle(farm_state)
    root = farm_state.out_root.resolve()
    outside = [p for p in root.parent.parent.rglob("escaped*") if not p.resolve().is_relative_to(root)]
    assert not outside
    assert any("is not a run id" in d["error"] for d in farm_state.store.dead_letters.unroutable())
    assert farm_state.ids(info) == [record_id(info.run, WORDS[0], 0)]


def test_a_relative_out_dir_leading_outside_the_root_fails_the_run_with_the_reason(farm_state: FarmState) -> None:
    config = make_config("outside")
    run = f"{config.name}-{config.config_hash()[:8]}"
    info = farm_state.store.create(run, config, "../../somewhere-else")
    push(farm_state.client, [make_record(run, WORDS[0], 0)])
    farm_state.start(farm_state.collector())
    wait_for(lambda: farm_state.store.status(run) == "failed", 20, "the run to fail")
    assert "outside the output root" in (farm_state.store.meta(run, "error")["error"] or "")
    assert not (farm_state.out_root / "../../somewhere-else").exists()
    assert info.run == run


def test_a_forged_record_id_and_an_unknown_run_are_parked(farm_state: FarmState) -> None:
    info = farm_state.create_run()
    forged = make_record(info.run, WORDS[0], 0).model_copy(update={"id": "f" * 24})
    unknown = make_record("nosuch-0123abcd", WORDS[0], 0)
    push(farm_state.client, [forged, unknown])
    farm_state.client.xadd("convfarm:results", {"record": b"{not json"})
    farm_state.start(farm_state.collector())
    settle(farm_state)
    assert "does not match" in farm_state.store.dead_letters.list(info.run)[0]["error"]
    errors = [d["error"] for d in farm_state.store.dead_letters.unroutable()]
    assert any("no such run" in e for e in errors) and any("malformed entry" in e for e in errors)


def test_a_script_error_on_one_record_parks_it_instead_of_stalling_the_farm(farm_state: FarmState) -> None:
    """A Lua script that raises on one record's values is that record's error, not a Redis outage:
    the record is parked (dead letter), the others are committed, nothing stays pending."""
    info = farm_state.create_run()
    push(farm_state.client, [make_record(info.run, w, 0) for w in WORDS])
    collector = farm_state.collector()
    outcome_script = collector.store._record
    real = outcome_script._script
    poison = WORDS[2]

    def script(*, keys, args):  # raises as Redis does on a value the Lua cannot take
        if poison in args:
            raise redis.ResponseError("ERR user_script:9: attempt to compare nil with number script: x")
        return real(keys=keys, args=args)

    outcome_script._script = script
    farm_state.start(collector)
    settle(farm_state)
    letters = farm_state.store.dead_letters.list(info.run)
    assert [d["word"] for d in letters] == [poison] and "record_outcome" in letters[0]["error"]
    assert farm_state.store.words_done(info.run) == len(WORDS) - 1


def test_dead_letters_are_capped_oldest_first_and_status_reads_none_of_them(farm_state: FarmState,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from convfarm.runstate import deadletters
    from convfarm.runstate.deadletters import DeadLetterRegistry, dead_letter
    from producer.status import run_status

    monkeypatch.setattr(deadletters, "DLQ_CAP", 3)
    info = farm_state.create_run()
    store = farm_state.store
    for attempt in range(5):
        store.dead_letters.add(info.run, dead_letter(WORDS[attempt % 2], attempt, "boom", "test"))
    assert [d["attempt"] for d in store.dead_letters.list(info.run)] == [2, 3, 4]  # the newest
    assert store.dead_letters.dropped(info.run) == 2

    def no_reading(*_: object) -> None:
        raise AssertionError("status read the dead letters")

    monkeypatch.setattr(DeadLetterRegistry, "list", no_reading)
    status = run_status(store, info.run)
    assert (status["dead_letters"], status["dead_letters_dropped"], status["words"]["dead_lettered"]) == (3, 2, 2)
