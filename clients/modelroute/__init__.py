"""modelroute client: generated stubs (`modelroute.v1`), a thin typed client and the admin CLI."""

from .client import ModelMutation, ModelrouteClient, ModelrouteError

__all__ = ["ModelMutation", "ModelrouteClient", "ModelrouteError"]
