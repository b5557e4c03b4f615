"""modelroute client: generated stubs (`modelroute.v1`), the typed clients and the admin CLI.

`modelroute.Client` (synchronous) and `modelroute.aio.Client` (asyncio) share channel settings, retries,
deadlines and errors (`modelroute.errors`: one class per error reason, below one per status code).
"""

from . import aio, errors
from .calls import Written
from .client import Client, ModelrouteClient, Pager
from .credentials import TLS, CredentialsError
from .errors import ModelrouteError

__all__ = [
    "TLS",
    "Client",
    "CredentialsError",
    "ModelrouteClient",
    "ModelrouteError",
    "Pager",
    "Written",
    "aio",
    "errors",
]
