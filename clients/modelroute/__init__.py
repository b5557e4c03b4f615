"""modelroute client: generated stubs (`modelroute.v1`), the typed clients and the admin CLI.

`modelroute.Client` (synchronous) and `modelroute.aio.Client` (asyncio) share channel settings, retries,
deadlines and errors (`modelroute.errors`: one class per error reason, below one per status code), and the
failover helper (`Client.call_with_failover`; `modelroute.failover`, with attempt reports in
`modelroute.attempts`).
"""

from . import aio, attempts, errors, failover
from .attempts import AttemptReport, Outcome, Reporting, ReportingStatistics
from .calls import Written
from .client import Client, ModelrouteClient, Pager
from .credentials import TLS, CredentialsError
from .errors import ModelrouteError
from .failover import (
    CALLER_MISTAKE,
    Attempt,
    Classification,
    Classifier,
    FailedAttempt,
    FailoverExhausted,
    classify_http,
)

__all__ = [
    "CALLER_MISTAKE",
    "TLS",
    "Attempt",
    "AttemptReport",
    "Classification",
    "Classifier",
    "Client",
    "CredentialsError",
    "FailedAttempt",
    "FailoverExhausted",
    "ModelrouteClient",
    "ModelrouteError",
    "Outcome",
    "Pager",
    "Reporting",
    "ReportingStatistics",
    "Written",
    "aio",
    "attempts",
    "classify_http",
    "errors",
    "failover",
]
