"""Metadata keys of the modelroute protocol (shared by the client and the server)."""

# Trailing metadata of every write: the config revision it produced (a caller may pass it as
# `min_revision` to read its own write on any replica).
CONFIG_REVISION_KEY = "modelroute-config-revision"
# Trailing metadata of a write that moved the default model: the new default's name ("" for none).
DEFAULT_MODEL_KEY = "modelroute-default-model-config"
