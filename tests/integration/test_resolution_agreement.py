"""ResolveModel, ListAvailableModels and ExplainResolution agree over the whole truth table
(docs/behaviour.md, "Resolution")."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from modelroute.v1 import common_pb2, resolver_pb2
from modelroute_server.domain.providers import KeySource
from modelroute_server.entrypoints.server import Application

from ..helpers import call_error, create_model, create_provider, stubs
from ..unit.test_resolver_truth_table import TRUTH_TABLE, Row
from .test_resolver import USER, row_family, setup_row


@dataclass(frozen=True)
class Verdict:
    """What one RPC says about a model for a user, reduced to what all three must agree on."""

    usable: bool
    selected: str  # provider config name, "" when none
    skipped: tuple[tuple[str, str], ...]  # (provider config name, skip reason name without prefix)


def reason_name(value: int) -> str:
    return common_pb2.SkipReason.Name(value).removeprefix("SKIP_REASON_")  # type: ignore[arg-type]


def from_resolve(s: Any, model: str, user: str) -> Verdict:
    request = resolver_pb2.ResolveModelRequest(model=model, user=user)
    try:
        answer = s.resolver.ResolveModel(request)
    except grpc.RpcError:
        error = call_error(s.resolver.ResolveModel, request)
        assert (error.code, error.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "NO_USABLE_ATTACHMENT")
        return Verdict(False, "", tuple((subject, kind) for kind, subject, _ in error.precondition_violations))
    return Verdict(
        True, answer.selected.provider_config, tuple((k.provider_config, reason_name(k.reason)) for k in answer.skipped)
    )


def from_listing(s: Any, model: str, user: str) -> Verdict:
    listing = s.resolver.ListAvailableModels(resolver_pb2.ListAvailableModelsRequest(user=user))
    [entry] = [m for m in listing.models if m.model_config == f"modelConfigs/{model}"]
    skipped = tuple((k.provider_config, reason_name(k.reason)) for k in entry.skipped)
    return Verdict(entry.usable, entry.selected_provider_config, skipped)


def from_explain(s: Any, model: str, user: str) -> Verdict:
    answer = s.resolver.ExplainResolution(resolver_pb2.ExplainResolutionRequest(model=model, user=user))
    selected = [o.provider_config for o in answer.outcomes if o.position == answer.selected_position]
    assert len(selected) == (1 if answer.usable else 0)
    skipped = tuple((o.provider_config, reason_name(o.reason)) for o in answer.outcomes if not o.usable)
    return Verdict(answer.usable, selected[0] if selected else "", skipped)


@pytest.mark.parametrize("row", TRUTH_TABLE, ids=lambda r: r.id)
def test_resolve_list_and_explain_agree(app: Application, channel: grpc.Channel, row: Row) -> None:
    s = stubs(channel)
    setup_row(s, app, row)
    family_name, _ = row_family(row)
    # The same config behind a disabled sibling: selection must move past position 0 in all three.
    create_provider(s, "blocker", family_name, api_key="sk-blocker", enabled=False)
    create_model(s, "m-behind", family_name, providers=("blocker", "p"))

    keyless = next(
        r
        for r in TRUTH_TABLE
        if (r.policy, r.central, r.family, r.user_key) == (row.policy, row.central, row.family, False)
    )
    for user, expected_row in ((USER, row), ("bob", keyless), ("", keyless)):
        # bob and the anonymous caller hold no key: for them this is the row's keyless twin.
        expectations = expected_verdicts(expected_row)
        for model, wanted in expectations.items():
            verdicts = (from_resolve(s, model, user), from_listing(s, model, user), from_explain(s, model, user))
            assert verdicts[0] == verdicts[1] == verdicts[2], (model, user, verdicts)
            assert verdicts[0] == wanted, (model, user)


def expected_verdicts(row: Row) -> dict[str, Verdict]:
    row_skip = () if isinstance(row.expected, KeySource) else (("providerConfigs/p", row.expected.value),)
    selected = "providerConfigs/p" if row.usable else ""
    return {
        "m": Verdict(row.usable, selected, row_skip),
        "m-behind": Verdict(row.usable, selected, (("providerConfigs/blocker", "PROVIDER_DISABLED"), *row_skip)),
    }
