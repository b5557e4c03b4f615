"""What each health name reports, by whether the database is ready."""

from __future__ import annotations

from datetime import timedelta

import pytest

from modelroute_server.domain.errors import ErrorCode, Reason
from modelroute_server.entrypoints.health import (
    ADMIN_SERVICES,
    HEALTH_NAMES,
    NOT_SERVING,
    OVERALL,
    RESOLVER_SERVICE,
    SERVING,
    service_statuses,
)
from modelroute_server.service_layer.snapshot import configuration_stale
from modelroute_server.settings import SettingsError, settings_from_env


@pytest.mark.parametrize(
    ("database_ready", "resolver_serving", "resolver", "admin"),
    [
        (True, True, SERVING, SERVING),
        # The resolver answers from its snapshot through an outage; a load balancer must keep it.
        (False, True, SERVING, NOT_SERVING),
        # ... unless MODELROUTE_MAX_SNAPSHOT_AGE says it has been cut off for too long.
        (False, False, NOT_SERVING, NOT_SERVING),
    ],
)
def test_statuses_by_database_readiness(
    database_ready: bool, resolver_serving: bool, resolver: int, admin: int
) -> None:
    statuses = service_statuses(database_ready, resolver_serving)
    assert set(statuses) == set(HEALTH_NAMES)
    assert statuses[RESOLVER_SERVICE] == resolver
    assert statuses[OVERALL] == statuses[RESOLVER_SERVICE]  # the overall name follows the resolver
    assert {statuses[name] for name in ADMIN_SERVICES} == {admin}


def test_every_modelroute_service_has_a_health_name() -> None:
    assert len(ADMIN_SERVICES) == 5 and RESOLVER_SERVICE not in ADMIN_SERVICES
    assert all(name.startswith("modelroute.v1.") for name in (RESOLVER_SERVICE, *ADMIN_SERVICES))


@pytest.mark.parametrize(
    ("seconds_cut_off", "max_age", "refused"),
    [
        (0.0, None, False),
        (86_400.0, None, False),  # unset: never refused, however long the outage
        (0.0, timedelta(seconds=30), False),
        (30.0, timedelta(seconds=30), False),
        (30.5, timedelta(seconds=30), True),
    ],
)
def test_a_replica_cut_off_for_longer_than_the_max_age_is_stale(
    seconds_cut_off: float, max_age: timedelta | None, refused: bool
) -> None:
    stale = configuration_stale(seconds_cut_off, max_age)
    assert (stale is not None) is refused
    if stale is not None:
        assert (stale.reason, stale.code) == (Reason.CONFIGURATION_STALE, ErrorCode.UNAVAILABLE)
        assert "MODELROUTE_MAX_SNAPSHOT_AGE" in stale.message


def test_the_max_snapshot_age_is_opt_in_and_checked() -> None:
    assert settings_from_env({}).max_snapshot_age is None
    assert settings_from_env({"MODELROUTE_MAX_SNAPSHOT_AGE": "5m"}).max_snapshot_age == timedelta(minutes=5)
    with pytest.raises(SettingsError, match="MODELROUTE_MAX_SNAPSHOT_AGE"):
        settings_from_env({"MODELROUTE_MAX_SNAPSHOT_AGE": "soon"})
