"""modelroute client: generated stubs (`modelroute.v1`), a thin typed client and the admin CLI."""

from .client import ModelMutation, ModelrouteClient, ModelrouteError
from .credentials import TLS, CredentialsError

__all__ = ["TLS", "CredentialsError", "ModelMutation", "ModelrouteClient", "ModelrouteError"]
