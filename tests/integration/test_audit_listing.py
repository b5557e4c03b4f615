"""The audit log read back: ListAuditEvents filters and pages newest first, no secret ever reaches an event, a
read or the log, and `modelroute-server audit prune` removes old events."""

from __future__ import annotations

import itertools
import subprocess
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from modelroute import ModelrouteClient
from modelroute.credentials import authenticated
from modelroute.v1 import (
    access_token_pb2,
    audit_pb2,
    model_config_pb2,
    provider_config_pb2,
    resolver_pb2,
    user_key_pb2,
)
from modelroute_server.adapters.crypto import generate_keyring_spec
from modelroute_server.entrypoints.server import Application

from ..audit_support import (
    BYOK,
    INVALID,
    TIMEOUT,
    USER_KEY,
    USER_KEY_2,
    Api,
    add_model,
    add_provider,
    changes,
    create_token,
    delete_key,
    delete_provider,
    event_time,
    fresh_token_id,
    list_events,
    mc,
    names,
    pc,
    plain,
    provider_and_model,
    revisions,
    revoke_token,
    set_key,
    update_model,
    update_provider,
)
from ..conftest import ALL_ROLES_TOKEN, RunningServer
from ..helpers import SERVER_BINARY, call_error, clean_env, stubs

# ---------------------------------------------------------------- 4. listing: filters and pages


@dataclass(frozen=True)
class History:
    """Nine events by two actors, over two providers and two users; `events` newest first."""

    events: list[audit_pb2.AuditEvent]
    auditor: str  # the second actor: an admin token made for the test

    def time(self, index: int, zone: timedelta = timedelta(0)) -> str:
        """The RFC 3339 time of the `index`-th oldest event (in another zone when `zone` is given)."""
        if zone:
            return self.at(index).astimezone(timezone(zone)).isoformat()  # e.g. 2026-...T03:04:05.678901-05:00
        return self.events[-1 - index].event_time.ToJsonString()  # e.g. 2026-...T08:04:05.678901Z

    def at(self, index: int) -> datetime:
        return event_time(self.events[-1 - index])


@pytest.fixture
def history(api: Api, running_server: RunningServer) -> History:
    add_provider(api, "p1", credential_policy=BYOK)
    add_provider(api, "p2")
    set_key(api, "alice", "p1", USER_KEY)
    auditor = fresh_token_id("auditor")
    secret = create_token(api, auditor, access_token_pb2.ROLE_ADMIN, access_token_pb2.ROLE_USER_KEYS).token
    channel = authenticated(running_server.plain_channel, secret)
    other = Api(channel, stubs(channel), api.tokens, api.audit, api.engine)
    set_key(other, "bob", "p1", USER_KEY)
    update_provider(other, "p2", ("display_name",), display_name="Second")
    delete_key(other, "alice", "p1")
    update_provider(api, "p1", ("display_name",), display_name="First")
    set_key(api, "alice", "p1", USER_KEY_2)
    events = list_events(api)
    assert len(events) == 9
    return History(events, auditor)


@dataclass(frozen=True)
class Query:
    """A filter built from the history, and the events it must return."""

    text: Callable[[History], str]
    matches: Callable[[History, audit_pb2.AuditEvent], bool]


QUERIES = {
    "resource": Query(lambda h: f'resource = "{pc("p1")}"', lambda h, e: e.resource == pc("p1")),
    "resource-token": Query(
        lambda h: f'resource = "accessTokens/{h.auditor}"', lambda h, e: e.resource == f"accessTokens/{h.auditor}"
    ),
    "actor-second": Query(lambda h: f'actor = "{h.auditor}"', lambda h, e: e.actor == h.auditor),
    "actor-tests": Query(lambda h: f'actor = "{ALL_ROLES_TOKEN}"', lambda h, e: e.actor == ALL_ROLES_TOKEN),
    "method": Query(lambda h: 'method = "SetUserProviderKey"', lambda h, e: e.method == "SetUserProviderKey"),
    "method-bare-value": Query(
        lambda h: "method = UpdateProviderConfig", lambda h, e: e.method == "UpdateProviderConfig"
    ),
    "user-alice": Query(lambda h: 'user = "alice"', lambda h, e: e.user == "alice"),
    "user-bob": Query(lambda h: 'user = "bob"', lambda h, e: e.user == "bob"),
    "time-at-or-after": Query(lambda h: f'event_time >= "{h.time(4)}"', lambda h, e: event_time(e) >= h.at(4)),
    "time-after": Query(lambda h: f'event_time > "{h.time(4)}"', lambda h, e: event_time(e) > h.at(4)),
    "time-before": Query(lambda h: f'event_time < "{h.time(4)}"', lambda h, e: event_time(e) < h.at(4)),
    "time-at-or-before": Query(lambda h: f'event_time <= "{h.time(4)}"', lambda h, e: event_time(e) <= h.at(4)),
    "time-range": Query(
        lambda h: f'event_time >= "{h.time(2)}" AND event_time < "{h.time(6)}"',
        lambda h, e: h.at(2) <= event_time(e) < h.at(6),
    ),
    "time-in-another-zone": Query(
        lambda h: f'event_time >= "{h.time(3, timedelta(hours=-5))}"', lambda h, e: event_time(e) >= h.at(3)
    ),
    "all-terms": Query(
        lambda h: (
            f'resource = "{pc("p1")}" AND actor = "{ALL_ROLES_TOKEN}" AND method = "SetUserProviderKey" '
            f'AND user = "alice" AND event_time > "{h.time(0)}"'
        ),
        lambda h, e: (
            (e.resource, e.actor, e.method, e.user) == (pc("p1"), ALL_ROLES_TOKEN, "SetUserProviderKey", "alice")
            and event_time(e) > h.at(0)
        ),
    ),
    "none": Query(lambda h: 'actor = "nobody"', lambda h, e: False),
}


@pytest.mark.parametrize("query", QUERIES.values(), ids=QUERIES.keys())
def test_each_filter_returns_exactly_the_matching_events_newest_first(api: Api, history: History, query: Query) -> None:
    expected = [e.name for e in history.events if query.matches(history, e)]
    assert len(expected) < len(history.events), "a filter that matches everything proves nothing"
    assert names(list_events(api, query.text(history))) == expected


def event_id(event: audit_pb2.AuditEvent) -> int:
    return int(event.name.removeprefix("auditEvents/"))


@pytest.mark.parametrize("audit_filter", ["", f'actor = "{ALL_ROLES_TOKEN}"', 'resource = "providerConfigs/p1"'])
def test_pages_of_two_walk_every_event_once_in_order(api: Api, history: History, audit_filter: str) -> None:
    everything = list_events(api, audit_filter)
    assert len(everything) >= 3  # more than one page
    # Newest first: ids fall strictly, times never rise.
    assert all(event_id(a) > event_id(b) for a, b in itertools.pairwise(everything))
    assert all(event_time(a) >= event_time(b) for a, b in itertools.pairwise(everything))

    walked: list[str] = []
    token, pages = "", 0
    while True:
        page = api.audit.ListAuditEvents(
            audit_pb2.ListAuditEventsRequest(filter=audit_filter, page_size=2, page_token=token), timeout=TIMEOUT
        )
        pages += 1
        assert 1 <= len(page.audit_events) <= 2
        walked += names(page.audit_events)
        if pages == 1:
            # A write between pages lands on top (a newer id): the walk neither repeats nor skips for it.
            add_provider(api, "p3")
        token = page.next_page_token
        if not token:
            break
    assert walked == names(everything)
    assert len(set(walked)) == len(walked)
    assert pages == (len(everything) + 1) // 2
    # The typed client follows the same pages (it now sees the provider written meanwhile, on top).
    typed = list(ModelrouteClient(api.channel).list_audit_events(audit_filter, page_size=2))
    assert names(typed[-len(everything) :]) == walked


def test_a_page_token_belongs_to_its_filter(api: Api, history: History) -> None:
    first = api.audit.ListAuditEvents(audit_pb2.ListAuditEventsRequest(page_size=2), timeout=TIMEOUT)
    assert first.next_page_token
    request = audit_pb2.ListAuditEventsRequest(filter='user = "alice"', page_size=2, page_token=first.next_page_token)
    error = call_error(api.audit.ListAuditEvents, request)
    assert (error.code, error.reason, error.fields) == (INVALID, "PAGE_TOKEN_INVALID", ["page_token"])


BAD_FILTERS = {
    "unknown-field": 'colour = "red"',
    "ordering-a-name": 'resource > "x"',
    "bad-time": 'event_time >= "yesterday"',
    "time-without-zone": 'event_time >= "2026-01-01T00:00:00"',
    "date-without-zone": 'event_time >= "2026-01-01"',
    "time-by-equality": 'event_time = "2026-01-01T00:00:00Z"',
    "missing-and": 'resource = "a" actor = "b"',
    "trailing-and": 'resource = "a" AND',
    "or": 'resource = "a" OR actor = "b"',
    "lower-case-and": 'resource = "a" and actor = "b"',
    "same-field-twice": 'resource = "a" AND resource = "b"',
    "unterminated-quote": 'resource = "a',
    "no-value": "resource =",
    "too-long": f'resource = "{"x" * 1100}"',
}


@pytest.mark.parametrize(
    "audit_filter",
    [
        *(pytest.param(text, id=name) for name, text in BAD_FILTERS.items()),
        # PostgreSQL refuses NUL in text: the value must never get that far.
        pytest.param('resource = "a\x00b"', id="nul-character"),
        pytest.param('actor = "a\x1bb"', id="control-character"),
        pytest.param('event_time >= "2026-01-01 00:00:00Z"', id="time-with-a-space"),
        pytest.param('event_time >= "20260101T000000Z"', id="time-without-separators"),
    ],
)
def test_bad_filters_are_invalid_argument(api: Api, audit_filter: str) -> None:
    error = call_error(api.audit.ListAuditEvents, audit_pb2.ListAuditEventsRequest(filter=audit_filter))
    assert (error.code, error.reason, error.fields) == (INVALID, "FILTER_INVALID", ["filter"])


# ---------------------------------------------------------------- 5. no secret anywhere


def leaks(texts: Iterable[str], secrets: list[str]) -> bool:
    return any(secret in text for text in texts for secret in secrets)


def test_no_key_or_token_secret_reaches_the_log_the_table_or_any_read(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    marker = uuid.uuid4().hex  # in every key below, and nowhere else
    central, replaced = f"sk-AUDIT-{marker}-central", f"sk-AUDIT-{marker}-replaced"
    alice_key, alice_key_2, bob_key = f"uk-AUDIT-{marker}-alice", f"uk-AUDIT-{marker}-alice-2", f"uk-AUDIT-{marker}-bob"

    add_provider(api, api_key=central, credential_policy=BYOK)
    update_provider(api, "p", ("api_key",), api_key=replaced)
    add_model(api)
    set_key(api, "alice", "p", alice_key)
    set_key(api, "alice", "p", alice_key_2)
    set_key(api, "bob", "p", bob_key)
    delete_key(api, "alice", "p")
    token_id = fresh_token_id()
    token_secret = create_token(api, token_id, access_token_pb2.ROLE_RESOLVER).token
    revoke_token(api, token_id)
    secrets = [marker, central, replaced, alice_key, alice_key_2, bob_key, token_secret, token_secret[len("mrt_") :]]

    # Positive control: the secrets are real and the check sees them where they belong.
    resolved = api.s.resolver.ResolveModel(resolver_pb2.ResolveModelRequest(model="m", user="bob"), timeout=TIMEOUT)
    if not leaks([str(resolved)], [bob_key]) or not token_secret.startswith("mrt_"):
        raise AssertionError("the positive control failed: bob's key does not resolve (or the token is malformed)")

    # Every read a non-resolver can make, while everything still exists.
    reads = [
        api.s.providers.GetProviderConfig(provider_config_pb2.GetProviderConfigRequest(name=pc("p")), timeout=TIMEOUT),
        api.s.providers.ListProviderConfigs(provider_config_pb2.ListProviderConfigsRequest(), timeout=TIMEOUT),
        api.s.models.GetModelConfig(model_config_pb2.GetModelConfigRequest(name=mc("m")), timeout=TIMEOUT),
        api.s.models.ListModelConfigs(model_config_pb2.ListModelConfigsRequest(show_deleted=True), timeout=TIMEOUT),
        api.tokens.ListAccessTokens(access_token_pb2.ListAccessTokensRequest(page_size=200), timeout=TIMEOUT),
        api.s.user_keys.ListUserProviderConfigs(
            user_key_pb2.ListUserProviderConfigsRequest(user="bob"), timeout=TIMEOUT
        ),
    ]
    if leaks(map(str, reads), secrets):
        raise AssertionError("a provider, model, token or user-key read returned a secret")

    delete_provider(api, "p", force=True)  # the cascade (bob's key) is audited too

    responses, token = [], ""
    while True:
        page = api.audit.ListAuditEvents(
            audit_pb2.ListAuditEventsRequest(page_size=2, page_token=token), timeout=TIMEOUT
        )
        responses.append(page)
        token = page.next_page_token
        if not token:
            break
    events = [e for page in responses for e in page.audit_events]
    assert len(events) == 10
    secret_fields = [c for e in events for c in e.changes if c.field in ("api_key", "token")]
    assert {plain(c.after, c.HasField("after")) for c in secret_fields} == {"set", "replaced", "cleared"}
    if leaks(map(str, responses), secrets):
        raise AssertionError("ListAuditEvents returned a secret")

    with api.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT changes::text, actor, resource, method, user_id FROM audit_events")).all()
    assert len(rows) == 10
    if leaks((str(tuple(row)) for row in rows), secrets):
        raise AssertionError("the audit_events table holds a secret")

    if leaks([caplog.text], secrets):
        raise AssertionError("a secret reached the server's log")


# ---------------------------------------------------------------- 6. pruning from the command line


def prune(app: Application, before: str) -> subprocess.CompletedProcess[str]:
    """`modelroute-server audit prune` on the test database (it decrypts nothing: any keyring will do)."""
    env = clean_env(MODELROUTE_KEYRING=generate_keyring_spec(), MODELROUTE_LOG_LEVEL="WARNING")
    command = [str(SERVER_BINARY), "audit", "prune", "--before", before, "--database-url", app.database_url]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)


def test_pruning_before_a_future_time_leaves_only_its_own_event(api: Api, app: Application) -> None:
    provider_and_model(api)
    update_model(api, "m", ("display_name",), display_name="M")
    create_token(api, fresh_token_id())
    earlier = len(list_events(api))
    assert earlier == 4
    revision = revisions(api)
    before = (datetime.now(UTC) + timedelta(days=1)).replace(microsecond=0)

    result = prune(app, before.isoformat())

    assert result.returncode == 0, result.stderr
    assert f"removed {earlier} audit event(s)" in result.stdout
    (event,) = list_events(api)
    assert (event.method, event.actor, event.resource, event.user) == (
        "PruneAuditEvents",
        "cli:audit prune",
        "auditEvents",
        "",
    )
    assert event.config_revision == 0 and revisions(api) == revision  # pruning takes no config revision
    recorded = changes(event)
    assert recorded["removed"] == (None, earlier)
    assert datetime.fromisoformat(recorded["pruned_before"][1]) == before

    # Pruning what is already gone removes nothing, so it changes nothing and records nothing.
    again = prune(app, "2001-01-01")
    assert again.returncode == 0, again.stderr
    assert "removed 0 audit event(s)" in again.stdout
    assert [e.name for e in list_events(api)] == [event.name]


def test_pruning_before_an_event_keeps_it_and_everything_newer(api: Api, app: Application, history: History) -> None:
    kept = [e.name for e in history.events if event_time(e) >= history.at(5)]
    removed = len(history.events) - len(kept)
    assert kept and removed

    result = prune(app, history.time(5))

    assert result.returncode == 0, result.stderr
    assert f"removed {removed} audit event(s)" in result.stdout
    events = list_events(api)
    assert events[0].method == "PruneAuditEvents"
    assert names(events[1:]) == kept
