"""Resource identity shared by every use case: names in errors, not-found errors, etags."""

from __future__ import annotations

from ..domain.access import access_token_name
from ..domain.errors import DomainError, Reason, ResourceRef, quoted
from ..domain.models import model_config_name
from ..domain.providers import provider_config_name

PROVIDER_CONFIG_TYPE = "modelroute.internal/ProviderConfig"
MODEL_CONFIG_TYPE = "modelroute.internal/ModelConfig"
ACCESS_TOKEN_TYPE = "modelroute.internal/AccessToken"


def provider_resource(provider_config_id: str) -> ResourceRef:
    return ResourceRef(PROVIDER_CONFIG_TYPE, provider_config_name(provider_config_id))


def model_resource(model_config_id: str) -> ResourceRef:
    return ResourceRef(MODEL_CONFIG_TYPE, model_config_name(model_config_id))


def access_token_resource(access_token_id: str) -> ResourceRef:
    return ResourceRef(ACCESS_TOKEN_TYPE, access_token_name(access_token_id))


def provider_not_found(provider_config_id: str, context: str = "") -> DomainError:
    resource = provider_resource(provider_config_id)
    return DomainError(
        Reason.PROVIDER_CONFIG_NOT_FOUND, f"{context}{resource.resource_name} does not exist", resource=resource
    )


def model_not_found(model_config_id: str) -> DomainError:
    resource = model_resource(model_config_id)
    return DomainError(Reason.MODEL_CONFIG_NOT_FOUND, f"{resource.resource_name} does not exist", resource=resource)


def access_token_not_found(access_token_id: str) -> DomainError:
    resource = access_token_resource(access_token_id)
    return DomainError(Reason.ACCESS_TOKEN_NOT_FOUND, f"{resource.resource_name} does not exist", resource=resource)


def etag_of(revision: int) -> str:
    """The revision a row was last written at, quoted (AIP-154); unique across the whole configuration."""
    return f'"{revision}"'


def check_etag(given: str, current_revision: int, resource: ResourceRef) -> None:
    if given and given != etag_of(current_revision):
        raise DomainError(
            Reason.ETAG_MISMATCH,
            f"{resource.resource_name} was changed since it was read (etag {quoted(given)} is stale); "
            "read it again and retry",
            metadata={"current_etag": etag_of(current_revision)},
            resource=resource,
        )
