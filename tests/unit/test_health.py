"""What each health name reports, by whether the database is ready."""

from __future__ import annotations

import pytest

from modelroute_server.entrypoints.health import (
    ADMIN_SERVICES,
    HEALTH_NAMES,
    NOT_SERVING,
    OVERALL,
    RESOLVER_SERVICE,
    SERVING,
    service_statuses,
)


@pytest.mark.parametrize(
    ("database_ready", "resolver", "admin"),
    [
        (True, SERVING, SERVING),
        # The resolver answers from its snapshot through an outage; a load balancer must keep it.
        (False, SERVING, NOT_SERVING),
    ],
)
def test_statuses_by_database_readiness(database_ready: bool, resolver: int, admin: int) -> None:
    statuses = service_statuses(database_ready)
    assert set(statuses) == set(HEALTH_NAMES)
    assert statuses[RESOLVER_SERVICE] == resolver
    assert statuses[OVERALL] == statuses[RESOLVER_SERVICE]  # the overall name follows the resolver
    assert {statuses[name] for name in ADMIN_SERVICES} == {admin}


def test_every_modelroute_service_has_a_health_name() -> None:
    assert len(ADMIN_SERVICES) == 5 and RESOLVER_SERVICE not in ADMIN_SERVICES
    assert all(name.startswith("modelroute.v1.") for name in (RESOLVER_SERVICE, *ADMIN_SERVICES))
