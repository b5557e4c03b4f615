"""modelroute client: generated stubs (`modelroute.v1`), a thin typed client and the admin CLI."""

from .client import ModelrouteClient, ModelrouteError

__all__ = ["ModelrouteClient", "ModelrouteError"]
