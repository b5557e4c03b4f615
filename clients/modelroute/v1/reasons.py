"""Generated from protos/modelroute/v1/error_reason.proto by scripts/generate_protos.py; do not edit."""

from __future__ import annotations

from ..errors import ModelrouteError, AbortedError, AlreadyExistsError, FailedPreconditionError, InternalError, InvalidArgumentError, NotFoundError, PermissionDeniedError, ResourceExhaustedError, UnauthenticatedError, UnavailableError


class FieldInvalidError(InvalidArgumentError):
    """FIELD_INVALID (INVALID_ARGUMENT): A request field is invalid; BadRequest names each one."""

    REASON = "FIELD_INVALID"


class CredentialPolicyInvalidError(InvalidArgumentError):
    """CREDENTIAL_POLICY_INVALID (INVALID_ARGUMENT): The three credential policy flags form no valid combination."""

    REASON = "CREDENTIAL_POLICY_INVALID"


class FamilyImmutableError(InvalidArgumentError):
    """FAMILY_IMMUTABLE (INVALID_ARGUMENT): An update tried to change a provider config's family."""

    REASON = "FAMILY_IMMUTABLE"


class UpdateMaskInvalidError(InvalidArgumentError):
    """UPDATE_MASK_INVALID (INVALID_ARGUMENT): The update mask names a field that does not exist or cannot be written."""

    REASON = "UPDATE_MASK_INVALID"


class FilterInvalidError(InvalidArgumentError):
    """FILTER_INVALID (INVALID_ARGUMENT): A List filter does not parse or names an unknown field."""

    REASON = "FILTER_INVALID"


class PageTokenInvalidError(InvalidArgumentError):
    """PAGE_TOKEN_INVALID (INVALID_ARGUMENT): A page token was not issued for this request, or has been tampered with."""

    REASON = "PAGE_TOKEN_INVALID"


class RequestMalformedError(InvalidArgumentError):
    """REQUEST_MALFORMED (INVALID_ARGUMENT): The request bytes are not a valid message, or it is too large."""

    REASON = "REQUEST_MALFORMED"


class AttachmentsInvalidError(InvalidArgumentError):
    """ATTACHMENTS_INVALID (INVALID_ARGUMENT): The ordered attachment list is invalid; BadRequest names each entry."""

    REASON = "ATTACHMENTS_INVALID"


class ProviderConfigNotFoundError(NotFoundError):
    """PROVIDER_CONFIG_NOT_FOUND (NOT_FOUND)"""

    REASON = "PROVIDER_CONFIG_NOT_FOUND"


class ModelConfigNotFoundError(NotFoundError):
    """MODEL_CONFIG_NOT_FOUND (NOT_FOUND)"""

    REASON = "MODEL_CONFIG_NOT_FOUND"


class ProviderConfigAlreadyExistsError(AlreadyExistsError):
    """PROVIDER_CONFIG_ALREADY_EXISTS (ALREADY_EXISTS)"""

    REASON = "PROVIDER_CONFIG_ALREADY_EXISTS"


class ModelConfigAlreadyExistsError(AlreadyExistsError):
    """MODEL_CONFIG_ALREADY_EXISTS (ALREADY_EXISTS)"""

    REASON = "MODEL_CONFIG_ALREADY_EXISTS"


class EtagMismatchError(AbortedError):
    """ETAG_MISMATCH (ABORTED): The etag given is not the resource's current one (metadata `current_etag`)."""

    REASON = "ETAG_MISMATCH"


class ProviderConfigInUseError(FailedPreconditionError):
    """PROVIDER_CONFIG_IN_USE (FAILED_PRECONDITION): A provider config still attached to models cannot be deleted without `force`."""

    REASON = "PROVIDER_CONFIG_IN_USE"


class ProviderConfigDisabledError(FailedPreconditionError):
    """PROVIDER_CONFIG_DISABLED (FAILED_PRECONDITION): A user key cannot be set for a disabled provider config."""

    REASON = "PROVIDER_CONFIG_DISABLED"


class UserKeysNotAllowedError(FailedPreconditionError):
    """USER_KEYS_NOT_ALLOWED (FAILED_PRECONDITION): The provider config's credential policy takes no user keys."""

    REASON = "USER_KEYS_NOT_ALLOWED"


class NoProviderConfigToAttachError(FailedPreconditionError):
    """NO_PROVIDER_CONFIG_TO_ATTACH (FAILED_PRECONDITION): A model created without attachments: no enabled provider config of its family exists to attach."""

    REASON = "NO_PROVIDER_CONFIG_TO_ATTACH"


class TooManyProviderConfigsToAttachError(FailedPreconditionError):
    """TOO_MANY_PROVIDER_CONFIGS_TO_ATTACH (FAILED_PRECONDITION): A model created without attachments: more enabled provider configs of its family exist than a model may hold (25); list the attachments."""

    REASON = "TOO_MANY_PROVIDER_CONFIGS_TO_ATTACH"


class ModelConfigDisabledError(FailedPreconditionError):
    """MODEL_CONFIG_DISABLED (FAILED_PRECONDITION)"""

    REASON = "MODEL_CONFIG_DISABLED"


class ModelConfigDeletedError(FailedPreconditionError):
    """MODEL_CONFIG_DELETED (FAILED_PRECONDITION)"""

    REASON = "MODEL_CONFIG_DELETED"


class ModelConfigNotDeletedError(AlreadyExistsError):
    """MODEL_CONFIG_NOT_DELETED (ALREADY_EXISTS): Undelete of a model that is not deleted (AIP-164)."""

    REASON = "MODEL_CONFIG_NOT_DELETED"


class DisabledModelCannotBeDefaultError(FailedPreconditionError):
    """DISABLED_MODEL_CANNOT_BE_DEFAULT (FAILED_PRECONDITION)"""

    REASON = "DISABLED_MODEL_CANNOT_BE_DEFAULT"


class NoDefaultModelError(FailedPreconditionError):
    """NO_DEFAULT_MODEL (FAILED_PRECONDITION): No model was named and there is no default model."""

    REASON = "NO_DEFAULT_MODEL"


class NoUsableAttachmentError(FailedPreconditionError):
    """NO_USABLE_ATTACHMENT (FAILED_PRECONDITION): Every attachment was skipped; PreconditionFailure lists each with its reason."""

    REASON = "NO_USABLE_ATTACHMENT"


class SchemaUpgradePendingError(FailedPreconditionError):
    """SCHEMA_UPGRADE_PENDING (FAILED_PRECONDITION): The database schema is not yet at the revision this write needs."""

    REASON = "SCHEMA_UPGRADE_PENDING"


class RevisionNotReachedError(FailedPreconditionError):
    """REVISION_NOT_REACHED (FAILED_PRECONDITION): `min_revision` was not reached on this replica within the wait."""

    REASON = "REVISION_NOT_REACHED"


class DatabaseUnavailableError(UnavailableError):
    """DATABASE_UNAVAILABLE (UNAVAILABLE)"""

    REASON = "DATABASE_UNAVAILABLE"


class DatabaseBusyError(UnavailableError):
    """DATABASE_BUSY (UNAVAILABLE): A lock or statement ran past its timeout; retry after the delay given."""

    REASON = "DATABASE_BUSY"


class TooManyCallsError(ResourceExhaustedError):
    """TOO_MANY_CALLS (RESOURCE_EXHAUSTED): This replica is at its limit for the call's class; retry after the delay given."""

    REASON = "TOO_MANY_CALLS"


class ConfigurationStaleError(UnavailableError):
    """CONFIGURATION_STALE (UNAVAILABLE): This replica has been cut off from the database for longer than allowed."""

    REASON = "CONFIGURATION_STALE"


class AccessTokenNotFoundError(NotFoundError):
    """ACCESS_TOKEN_NOT_FOUND (NOT_FOUND)"""

    REASON = "ACCESS_TOKEN_NOT_FOUND"


class AccessTokenAlreadyExistsError(AlreadyExistsError):
    """ACCESS_TOKEN_ALREADY_EXISTS (ALREADY_EXISTS)"""

    REASON = "ACCESS_TOKEN_ALREADY_EXISTS"


class CredentialsMissingError(UnauthenticatedError):
    """CREDENTIALS_MISSING (UNAUTHENTICATED): The call carries no bearer token or client certificate."""

    REASON = "CREDENTIALS_MISSING"


class CredentialsMalformedError(UnauthenticatedError):
    """CREDENTIALS_MALFORMED (UNAUTHENTICATED): The authorization metadata is not `Bearer <token>`."""

    REASON = "CREDENTIALS_MALFORMED"


class TokenUnknownError(UnauthenticatedError):
    """TOKEN_UNKNOWN (UNAUTHENTICATED)"""

    REASON = "TOKEN_UNKNOWN"


class TokenExpiredError(UnauthenticatedError):
    """TOKEN_EXPIRED (UNAUTHENTICATED)"""

    REASON = "TOKEN_EXPIRED"


class TokenRevokedError(UnauthenticatedError):
    """TOKEN_REVOKED (UNAUTHENTICATED)"""

    REASON = "TOKEN_REVOKED"


class RoleRequiredError(PermissionDeniedError):
    """ROLE_REQUIRED (PERMISSION_DENIED): The caller lacks the role the method needs (metadata `required_roles`)."""

    REASON = "ROLE_REQUIRED"


class CredentialsNotLoadedError(UnavailableError):
    """CREDENTIALS_NOT_LOADED (UNAVAILABLE): This replica has not loaded its access tokens yet."""

    REASON = "CREDENTIALS_NOT_LOADED"


# Every reason of the ErrorReason enum, by its ErrorInfo.reason string.
REASON_CLASSES: dict[str, type[ModelrouteError]] = {
    "FIELD_INVALID": FieldInvalidError,
    "CREDENTIAL_POLICY_INVALID": CredentialPolicyInvalidError,
    "FAMILY_IMMUTABLE": FamilyImmutableError,
    "UPDATE_MASK_INVALID": UpdateMaskInvalidError,
    "FILTER_INVALID": FilterInvalidError,
    "PAGE_TOKEN_INVALID": PageTokenInvalidError,
    "REQUEST_MALFORMED": RequestMalformedError,
    "ATTACHMENTS_INVALID": AttachmentsInvalidError,
    "PROVIDER_CONFIG_NOT_FOUND": ProviderConfigNotFoundError,
    "MODEL_CONFIG_NOT_FOUND": ModelConfigNotFoundError,
    "PROVIDER_CONFIG_ALREADY_EXISTS": ProviderConfigAlreadyExistsError,
    "MODEL_CONFIG_ALREADY_EXISTS": ModelConfigAlreadyExistsError,
    "ETAG_MISMATCH": EtagMismatchError,
    "PROVIDER_CONFIG_IN_USE": ProviderConfigInUseError,
    "PROVIDER_CONFIG_DISABLED": ProviderConfigDisabledError,
    "USER_KEYS_NOT_ALLOWED": UserKeysNotAllowedError,
    "NO_PROVIDER_CONFIG_TO_ATTACH": NoProviderConfigToAttachError,
    "TOO_MANY_PROVIDER_CONFIGS_TO_ATTACH": TooManyProviderConfigsToAttachError,
    "MODEL_CONFIG_DISABLED": ModelConfigDisabledError,
    "MODEL_CONFIG_DELETED": ModelConfigDeletedError,
    "MODEL_CONFIG_NOT_DELETED": ModelConfigNotDeletedError,
    "DISABLED_MODEL_CANNOT_BE_DEFAULT": DisabledModelCannotBeDefaultError,
    "NO_DEFAULT_MODEL": NoDefaultModelError,
    "NO_USABLE_ATTACHMENT": NoUsableAttachmentError,
    "SCHEMA_UPGRADE_PENDING": SchemaUpgradePendingError,
    "REVISION_NOT_REACHED": RevisionNotReachedError,
    "DATABASE_UNAVAILABLE": DatabaseUnavailableError,
    "DATABASE_BUSY": DatabaseBusyError,
    "TOO_MANY_CALLS": TooManyCallsError,
    "CONFIGURATION_STALE": ConfigurationStaleError,
    "ACCESS_TOKEN_NOT_FOUND": AccessTokenNotFoundError,
    "ACCESS_TOKEN_ALREADY_EXISTS": AccessTokenAlreadyExistsError,
    "CREDENTIALS_MISSING": CredentialsMissingError,
    "CREDENTIALS_MALFORMED": CredentialsMalformedError,
    "TOKEN_UNKNOWN": TokenUnknownError,
    "TOKEN_EXPIRED": TokenExpiredError,
    "TOKEN_REVOKED": TokenRevokedError,
    "ROLE_REQUIRED": RoleRequiredError,
    "CREDENTIALS_NOT_LOADED": CredentialsNotLoadedError,
    "INTERNAL_ERROR": InternalError,
}

__all__ = [
    "AccessTokenAlreadyExistsError",
    "AccessTokenNotFoundError",
    "AttachmentsInvalidError",
    "ConfigurationStaleError",
    "CredentialPolicyInvalidError",
    "CredentialsMalformedError",
    "CredentialsMissingError",
    "CredentialsNotLoadedError",
    "DatabaseBusyError",
    "DatabaseUnavailableError",
    "DisabledModelCannotBeDefaultError",
    "EtagMismatchError",
    "FamilyImmutableError",
    "FieldInvalidError",
    "FilterInvalidError",
    "ModelConfigAlreadyExistsError",
    "ModelConfigDeletedError",
    "ModelConfigDisabledError",
    "ModelConfigNotDeletedError",
    "ModelConfigNotFoundError",
    "NoDefaultModelError",
    "NoProviderConfigToAttachError",
    "NoUsableAttachmentError",
    "PageTokenInvalidError",
    "ProviderConfigAlreadyExistsError",
    "ProviderConfigDisabledError",
    "ProviderConfigInUseError",
    "ProviderConfigNotFoundError",
    "RequestMalformedError",
    "RevisionNotReachedError",
    "RoleRequiredError",
    "SchemaUpgradePendingError",
    "TokenExpiredError",
    "TokenRevokedError",
    "TokenUnknownError",
    "TooManyCallsError",
    "TooManyProviderConfigsToAttachError",
    "UpdateMaskInvalidError",
    "UserKeysNotAllowedError",
]
