"""The audit log records every state-changing call once, in the transaction of its change; a call that fails or
changes nothing records nothing and takes no config revision; an event says what changed field by field."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest

from modelroute.v1 import (
    access_token_pb2,
    audit_pb2,
    common_pb2,
    model_config_pb2,
    provider_config_pb2,
)

from ..audit_support import (
    ABORTED,
    CENTRAL_KEY,
    EXISTS,
    INVALID,
    NOT_FOUND,
    OTHER_KEY,
    PRECONDITION,
    TIMEOUT,
    USER_KEY,
    USER_KEY_2,
    Api,
    add_model,
    add_provider,
    byok_provider,
    byok_provider_with_key,
    changes,
    create_token,
    delete_key,
    delete_model,
    delete_provider,
    etag_revision,
    event_time,
    everything_attached,
    fresh_token_id,
    list_events,
    mc,
    names,
    new_token,
    nothing,
    pc,
    provider_and_deleted_model,
    provider_and_model,
    revisions,
    revoke_token,
    revoked_token,
    set_key,
    stale_model_etag,
    stale_provider_etag,
    state,
    undelete_model,
    update_model,
    update_provider,
)
from ..conftest import ALL_ROLES_TOKEN
from ..helpers import call_error, create_model, policy

# ---------------------------------------------------------------- 1. one event per state-changing call


@dataclass(frozen=True)
class Mutation:
    """A state-changing call. `setup` builds what it needs and returns what `call` needs; `call` makes the
    call and returns the resource it changed, the user (user keys only) and the revision its response
    carries (None when the response carries none)."""

    method: str
    setup: Callable[[Api], Any]
    call: Callable[[Api, Any], tuple[str, str, int | None]]
    takes_revision: bool = True  # access token changes take none: event revision 0


def set_alice_key(api: Api) -> tuple[str, str, None]:
    set_key(api, "alice", "p", USER_KEY)
    return pc("p"), "alice", None  # a user key's event names its provider config, and the user


def delete_alice_key(api: Api) -> tuple[str, str, None]:
    delete_key(api, "alice", "p")
    return pc("p"), "alice", None


MUTATIONS = {
    "CreateProviderConfig": Mutation(
        "CreateProviderConfig", nothing, lambda api, _: (pc("p"), "", etag_revision(add_provider(api).etag))
    ),
    "UpdateProviderConfig": Mutation(
        "UpdateProviderConfig",
        add_provider,
        lambda api, _: (
            pc("p"),
            "",
            etag_revision(update_provider(api, "p", ("display_name",), display_name="Renamed").etag),
        ),
    ),
    "DeleteProviderConfig": Mutation(
        "DeleteProviderConfig", add_provider, lambda api, _: (pc("p"), "", delete_provider(api, "p").config_revision)
    ),
    "DeleteProviderConfig-force-cascade": Mutation(
        "DeleteProviderConfig",
        everything_attached,
        lambda api, _: (pc("p"), "", delete_provider(api, "p", force=True).config_revision),
    ),
    "CreateModelConfig": Mutation(
        "CreateModelConfig", add_provider, lambda api, _: (mc("m"), "", etag_revision(add_model(api).etag))
    ),
    "UpdateModelConfig": Mutation(
        "UpdateModelConfig",
        provider_and_model,
        lambda api, _: (
            mc("m"),
            "",
            etag_revision(update_model(api, "m", ("display_name",), display_name="Renamed").etag),
        ),
    ),
    "DeleteModelConfig": Mutation(
        "DeleteModelConfig",
        provider_and_model,
        lambda api, _: (mc("m"), "", etag_revision(delete_model(api, "m").etag)),
    ),
    "UndeleteModelConfig": Mutation(
        "UndeleteModelConfig",
        provider_and_deleted_model,
        lambda api, _: (mc("m"), "", etag_revision(undelete_model(api, "m").etag)),
    ),
    "SetUserProviderKey": Mutation("SetUserProviderKey", byok_provider, lambda api, _: set_alice_key(api)),
    "DeleteUserProviderKey": Mutation(
        "DeleteUserProviderKey", byok_provider_with_key, lambda api, _: delete_alice_key(api)
    ),
    "CreateAccessToken": Mutation(
        "CreateAccessToken",
        lambda api: fresh_token_id(),
        lambda api, token_id: (create_token(api, token_id).access_token.name, "", None),
        takes_revision=False,
    ),
    "RevokeAccessToken": Mutation(
        "RevokeAccessToken",
        new_token,
        lambda api, token_id: (revoke_token(api, token_id).name, "", None),
        takes_revision=False,
    ),
}


@pytest.mark.parametrize("mutation", MUTATIONS.values(), ids=MUTATIONS.keys())
def test_every_state_changing_call_records_exactly_one_event(api: Api, mutation: Mutation) -> None:
    context = mutation.setup(api)
    earlier = list_events(api)
    (reported, stored) = revisions(api)
    assert reported == stored
    started = datetime.now(UTC)

    resource, user, answered = mutation.call(api, context)

    events = list_events(api)
    # Exactly one new event, on top of the ones before (newest first).
    assert names(events[1:]) == names(earlier), "a call wrote other than one event"
    event = events[0]
    assert (event.method, event.resource, event.actor, event.user) == (mutation.method, resource, ALL_ROLES_TOKEN, user)
    assert event.changes, "an event says what changed"
    # The server and the test share a clock; its time is now, not some default.
    assert started - timedelta(minutes=1) <= event_time(event) <= datetime.now(UTC) + timedelta(minutes=1)
    if mutation.takes_revision:
        # The change took the next revision, and the event carries it (as does the response, if it says).
        assert event.config_revision == stored + 1
        assert revisions(api) == (stored + 1, stored + 1)
        if answered is not None:
            assert event.config_revision == answered
    else:
        assert event.config_revision == 0
        assert revisions(api) == (stored, stored)


# ---------------------------------------------------------------- 2. no event without a change


@dataclass(frozen=True)
class Unchanged:
    """A call that changes nothing: it fails with `code` and `reason`, or (code None) succeeds as a no-op."""

    setup: Callable[[Api], Any]
    call: Callable[[Api, Any], Any]
    code: grpc.StatusCode | None = None
    reason: str = ""


def echo_provider(api: Api, provider_id: str, api_key: str = "") -> Any:
    """Sends a provider back as read (no mask: every populated field), with `api_key` (write-only) added."""
    read = api.s.providers.GetProviderConfig(
        provider_config_pb2.GetProviderConfigRequest(name=pc(provider_id)), timeout=TIMEOUT
    )
    read.api_key = api_key
    request = provider_config_pb2.UpdateProviderConfigRequest(provider_config=read)
    return api.s.providers.UpdateProviderConfig(request, timeout=TIMEOUT)


def echo_model(api: Api, model_id: str) -> Any:
    """Sends a model back as read, without a mask."""
    read = api.s.models.GetModelConfig(model_config_pb2.GetModelConfigRequest(name=mc(model_id)), timeout=TIMEOUT)
    request = model_config_pb2.UpdateModelConfigRequest(model_config=read)
    return api.s.models.UpdateModelConfig(request, timeout=TIMEOUT)


def disabled_model(api: Api) -> None:
    add_provider(api)
    add_model(api, "first")  # takes the default
    add_model(api, enabled=False)


UNCHANGED = {
    # Refused before or inside the write transaction (which then rolls back its revision).
    "create-provider-bad-id": Unchanged(nothing, lambda api, _: add_provider(api, "Bad Id"), INVALID, "FIELD_INVALID"),
    "create-provider-bad-key": Unchanged(
        nothing, lambda api, _: add_provider(api, api_key=" sk-padded "), INVALID, "FIELD_INVALID"
    ),
    "create-provider-exists": Unchanged(
        add_provider, lambda api, _: add_provider(api), EXISTS, "PROVIDER_CONFIG_ALREADY_EXISTS"
    ),
    "update-provider-missing": Unchanged(
        nothing,
        lambda api, _: update_provider(api, "ghost", ("display_name",), display_name="X"),
        NOT_FOUND,
        "PROVIDER_CONFIG_NOT_FOUND",
    ),
    "update-provider-stale-etag": Unchanged(
        stale_provider_etag,
        lambda api, etag: update_provider(api, "p", ("display_name",), display_name="X", etag=etag),
        ABORTED,
        "ETAG_MISMATCH",
    ),
    "update-provider-family": Unchanged(
        add_provider,
        lambda api, _: update_provider(api, "p", ("family",), family=common_pb2.FAMILY_ANTHROPIC),
        INVALID,
        "FAMILY_IMMUTABLE",
    ),
    "update-provider-clears-needed-key": Unchanged(
        add_provider, lambda api, _: update_provider(api, "p", ("api_key",)), INVALID, "FIELD_INVALID"
    ),
    "update-provider-bad-policy": Unchanged(
        add_provider,
        lambda api, _: update_provider(api, "p", ("credential_policy",), credential_policy=policy(False, False, False)),
        INVALID,
        "CREDENTIAL_POLICY_INVALID",
    ),
    "delete-provider-attached-without-force": Unchanged(
        provider_and_model, lambda api, _: delete_provider(api, "p"), PRECONDITION, "PROVIDER_CONFIG_IN_USE"
    ),
    "delete-provider-missing": Unchanged(
        nothing, lambda api, _: delete_provider(api, "ghost", force=True), NOT_FOUND, "PROVIDER_CONFIG_NOT_FOUND"
    ),
    "delete-provider-stale-etag": Unchanged(
        stale_provider_etag, lambda api, etag: delete_provider(api, "p", etag=etag), ABORTED, "ETAG_MISMATCH"
    ),
    "create-model-invalid": Unchanged(
        add_provider, lambda api, _: add_model(api, context_limit=0), INVALID, "FIELD_INVALID"
    ),
    "create-model-nothing-to-attach": Unchanged(
        nothing, lambda api, _: create_model(api.s, "m"), PRECONDITION, "NO_PROVIDER_CONFIG_TO_ATTACH"
    ),
    "create-model-missing-provider": Unchanged(
        nothing, lambda api, _: add_model(api, provider_id="ghost"), INVALID, "ATTACHMENTS_INVALID"
    ),
    "update-model-missing": Unchanged(
        nothing,
        lambda api, _: update_model(api, "ghost", ("display_name",), display_name="X"),
        NOT_FOUND,
        "MODEL_CONFIG_NOT_FOUND",
    ),
    "update-model-stale-etag": Unchanged(
        stale_model_etag,
        lambda api, etag: update_model(api, "m", ("display_name",), display_name="X", etag=etag),
        ABORTED,
        "ETAG_MISMATCH",
    ),
    "update-model-deleted": Unchanged(
        provider_and_deleted_model,
        lambda api, _: update_model(api, "m", ("display_name",), display_name="X"),
        PRECONDITION,
        "MODEL_CONFIG_DELETED",
    ),
    "update-model-disabled-default": Unchanged(
        disabled_model,
        lambda api, _: update_model(api, "m", ("is_default",), is_default=True),
        PRECONDITION,
        "DISABLED_MODEL_CANNOT_BE_DEFAULT",
    ),
    "delete-model-missing": Unchanged(
        nothing, lambda api, _: delete_model(api, "ghost"), NOT_FOUND, "MODEL_CONFIG_NOT_FOUND"
    ),
    "delete-model-stale-etag": Unchanged(
        stale_model_etag, lambda api, etag: delete_model(api, "m", etag), ABORTED, "ETAG_MISMATCH"
    ),
    "delete-model-already-deleted": Unchanged(
        provider_and_deleted_model, lambda api, _: delete_model(api, "m"), NOT_FOUND, "MODEL_CONFIG_NOT_FOUND"
    ),
    "undelete-model-live": Unchanged(
        provider_and_model, lambda api, _: undelete_model(api, "m"), EXISTS, "MODEL_CONFIG_NOT_DELETED"
    ),
    "set-user-key-not-allowed": Unchanged(
        add_provider, lambda api, _: set_key(api, "alice", "p", USER_KEY), PRECONDITION, "USER_KEYS_NOT_ALLOWED"
    ),
    "set-user-key-missing-provider": Unchanged(
        nothing, lambda api, _: set_key(api, "alice", "ghost", USER_KEY), NOT_FOUND, "PROVIDER_CONFIG_NOT_FOUND"
    ),
    "set-user-key-bad-user": Unchanged(
        byok_provider, lambda api, _: set_key(api, "", "p", USER_KEY), INVALID, "FIELD_INVALID"
    ),
    "create-token-no-roles": Unchanged(
        nothing,
        lambda api, _: api.tokens.CreateAccessToken(
            access_token_pb2.CreateAccessTokenRequest(
                access_token_id=fresh_token_id(), access_token=access_token_pb2.AccessToken()
            ),
            timeout=TIMEOUT,
        ),
        INVALID,
        "FIELD_INVALID",
    ),
    "create-token-exists": Unchanged(
        new_token, lambda api, token_id: create_token(api, token_id), EXISTS, "ACCESS_TOKEN_ALREADY_EXISTS"
    ),
    "revoke-token-missing": Unchanged(
        nothing, lambda api, _: revoke_token(api, fresh_token_id()), NOT_FOUND, "ACCESS_TOKEN_NOT_FOUND"
    ),
    # Accepted, but the same values: nothing to record, so nothing written.
    "update-provider-same-values-and-key": Unchanged(add_provider, lambda api, _: echo_provider(api, "p", CENTRAL_KEY)),
    "update-provider-same-display-name": Unchanged(
        lambda api: add_provider(api, display_name="Main"),
        lambda api, _: update_provider(api, "p", ("display_name",), display_name="Main"),
    ),
    "update-provider-same-key-by-mask": Unchanged(
        add_provider, lambda api, _: update_provider(api, "p", ("api_key",), api_key=CENTRAL_KEY)
    ),
    "update-provider-empty-mask": Unchanged(add_provider, lambda api, _: update_provider(api, "p", ())),
    "update-model-same-display-name": Unchanged(
        provider_and_model, lambda api, _: update_model(api, "m", ("display_name",), display_name="gpt-4.1")
    ),
    "update-model-same-values": Unchanged(provider_and_model, lambda api, _: echo_model(api, "m")),
    "update-model-default-again": Unchanged(
        provider_and_model, lambda api, _: update_model(api, "m", ("is_default",), is_default=True)
    ),
    "set-user-key-same-key": Unchanged(byok_provider_with_key, lambda api, _: set_key(api, "alice", "p", USER_KEY)),
    "delete-user-key-absent": Unchanged(byok_provider, lambda api, _: delete_key(api, "alice", "p")),
    "delete-user-key-of-missing-provider": Unchanged(nothing, lambda api, _: delete_key(api, "alice", "ghost")),
    "revoke-token-revoked": Unchanged(revoked_token, lambda api, token_id: revoke_token(api, token_id)),
}


@pytest.mark.parametrize("case", UNCHANGED.values(), ids=UNCHANGED.keys())
def test_calls_that_change_nothing_record_nothing_and_take_no_revision(api: Api, case: Unchanged) -> None:
    context = case.setup(api)
    earlier, revision, before = names(list_events(api)), revisions(api), state(api)

    if case.code is None:
        case.call(api, context)
    else:
        error = call_error(lambda _: case.call(api, context), None)
        assert (error.code, error.reason) == (case.code, case.reason), error.message

    assert names(list_events(api)) == earlier, "an unchanged state was audited"
    assert revisions(api) == revision, "an unchanged state took a config revision"
    assert state(api) == before, "a resource's etag (or a token's revocation) moved"


# ---------------------------------------------------------------- 3. what an event says, field by field


def newest(api: Api) -> audit_pb2.AuditEvent:
    return list_events(api)[0]


def test_provider_events_list_changed_fields_only_and_the_key_as_set_replaced_cleared(api: Api) -> None:
    add_provider(api, display_name="Main", api_key=CENTRAL_KEY)
    assert changes(newest(api)) == {
        # A create lists every field it set (base_url stays absent: it has none).
        "family": (None, "openai"),
        "display_name": (None, "Main"),
        "enabled": (None, True),
        "credential_policy.central_api_key_enabled": (None, True),
        "credential_policy.allow_user_api_key": (None, False),
        "credential_policy.allow_central_api_key_fallback": (None, False),
        "api_key": (None, "set"),
    }

    update_provider(
        api, "p", ("display_name", "api_key", "enabled"), display_name="Renamed", api_key=OTHER_KEY, enabled=False
    )
    assert changes(newest(api)) == {
        "display_name": ("Main", "Renamed"),
        "enabled": (True, False),
        "api_key": ("set", "replaced"),
    }

    # Named in the mask but unchanged (base_url stays absent, the policy's fallback stays off): not listed.
    update_provider(
        api,
        "p",
        ("base_url", "credential_policy", "api_key"),
        credential_policy=policy(False, True, False),
    )
    assert changes(newest(api)) == {
        "credential_policy.central_api_key_enabled": (True, False),
        "credential_policy.allow_user_api_key": (False, True),
        "api_key": ("set", "cleared"),
    }

    update_provider(api, "p", ("base_url", "api_key"), base_url="https://proxy.example.com/v1", api_key=CENTRAL_KEY)
    assert changes(newest(api)) == {
        "base_url": (None, "https://proxy.example.com/v1"),
        "api_key": (None, "set"),
    }
    assert [e.method for e in list_events(api)] == ["UpdateProviderConfig"] * 3 + ["CreateProviderConfig"]


def test_model_events_list_changed_fields_and_every_move_of_the_default(api: Api) -> None:
    add_provider(api)
    add_model(api, "first")
    created = changes(newest(api))
    # The first model became the default: the event says so, as one more field.
    assert created["default_model_config"] == (None, mc("first"))
    assert created["is_default"] == (None, True)
    assert created["provider_configs"] == (None, [pc("p")])
    assert created["context_limit"] == (None, 128_000)
    assert "delete_time" not in created and "options.temperature" not in created  # absent before and after

    add_model(api, "second", is_default=True)
    claimed = changes(newest(api))
    assert claimed["default_model_config"] == (mc("first"), mc("second"))
    assert claimed["is_default"] == (None, True)
    # One event per call: the model that lost the default got none of its own.
    assert [(e.method, e.resource) for e in list_events(api)] == [
        ("CreateModelConfig", mc("second")),
        ("CreateModelConfig", mc("first")),
        ("CreateProviderConfig", pc("p")),
    ]

    update_model(api, "second", ("display_name", "context_limit"), display_name="Second", context_limit=64_000)
    assert changes(newest(api)) == {"display_name": ("gpt-4.1", "Second"), "context_limit": (128_000, 64_000)}

    update_model(api, "second", ("options.temperature",), options=model_config_pb2.ModelCallOptions(temperature=0.5))
    assert changes(newest(api)) == {"options.temperature": (None, 0.5)}

    delete_model(api, "second")
    deleted = changes(newest(api))
    assert set(deleted) == {"delete_time", "is_default", "default_model_config"}
    assert deleted["delete_time"][0] is None and deleted["delete_time"][1]
    assert deleted["is_default"] == (True, False)
    assert deleted["default_model_config"] == (mc("second"), mc("first"))  # the default moved back

    undelete_model(api, "second")
    restored = changes(newest(api))
    # Back, but not the default any more: the default did not move, so it is not listed.
    assert set(restored) == {"delete_time"} and restored["delete_time"][1] is None


def test_user_key_events_carry_the_user_and_the_key_only_as_set_replaced_cleared(api: Api) -> None:
    byok_provider(api)
    set_key(api, "alice", "p", USER_KEY)
    set_key(api, "alice", "p", USER_KEY_2)
    set_key(api, "bob", "p", USER_KEY)
    delete_key(api, "alice", "p")
    events = list_events(api)[:4]  # newest first, the provider's creation below them
    assert [(e.method, e.resource, e.user, changes(e)) for e in events] == [
        ("DeleteUserProviderKey", pc("p"), "alice", {"api_key": ("set", "cleared")}),
        ("SetUserProviderKey", pc("p"), "bob", {"api_key": (None, "set")}),
        ("SetUserProviderKey", pc("p"), "alice", {"api_key": ("set", "replaced")}),
        ("SetUserProviderKey", pc("p"), "alice", {"api_key": (None, "set")}),
    ]
    assert all(e.config_revision > 0 for e in events)  # a user key change is a configuration change
    assert list_events(api)[4].user == ""  # a provider event names no user


def test_a_forced_delete_records_its_whole_cascade_in_one_event(api: Api) -> None:
    everything_attached(api)  # provider p with alice's key, serving model m (the default) alone
    add_provider(api, "spare")
    add_model(api, "kept", provider_id="spare")
    answer = delete_provider(api, "p", force=True)
    assert list(answer.deleted_model_configs) == [mc("m")]

    event = newest(api)
    assert (event.method, event.resource, event.config_revision) == (
        "DeleteProviderConfig",
        pc("p"),
        answer.config_revision,
    )
    recorded = changes(event)
    assert recorded["api_key"] == ("set", "cleared")
    assert recorded["display_name"][1] is None and recorded["family"] == ("openai", None)
    assert recorded["touched_model_configs"] == (None, [mc("m")])
    assert recorded["deleted_model_configs"] == (None, [mc("m")])
    assert recorded["user_keys_deleted"] == (None, 1)
    assert recorded["default_model_config"] == (mc("m"), mc("kept"))


def test_access_token_events_record_roles_and_times_never_the_token(api: Api) -> None:
    token_id = fresh_token_id()
    created = create_token(
        api, token_id, access_token_pb2.ROLE_RESOLVER, access_token_pb2.ROLE_READER, ttl_seconds=3600
    )
    event = newest(api)
    assert (event.resource, event.config_revision) == (f"accessTokens/{token_id}", 0)
    recorded = changes(event)
    assert set(recorded) == {"roles", "expire_time", "token"}
    assert recorded["roles"] == (None, ["reader", "resolver"])
    assert recorded["token"] == (None, "set")
    expire = datetime.fromisoformat(recorded["expire_time"][1])
    assert abs(expire - created.access_token.expire_time.ToDatetime(tzinfo=UTC)) < timedelta(seconds=1)

    revoked = revoke_token(api, token_id)
    recorded = changes(newest(api))
    assert set(recorded) == {"revoke_time"} and recorded["revoke_time"][0] is None
    assert abs(datetime.fromisoformat(recorded["revoke_time"][1]) - revoked.revoke_time.ToDatetime(tzinfo=UTC)) < (
        timedelta(seconds=1)
    )
