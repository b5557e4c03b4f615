"""The eight provider families and what each one needs."""

from __future__ import annotations

import enum


class Family(enum.Enum):
    ANTHROPIC = "anthropic"
    AZURE = "azure"
    BEDROCK = "bedrock"
    GOOGLE = "google"
    OPENAI = "openai"
    OPENAI_COMPAT = "openai-compat"
    OPENROUTER = "openrouter"
    VERCEL = "vercel"

    @property
    def default_display_name(self) -> str:
        return _DISPLAY_NAMES[self]

    @property
    def requires_base_url(self) -> bool:
        # Both have no canonical endpoint: a config without one cannot work.
        return self in (Family.AZURE, Family.OPENAI_COMPAT)

    @property
    def supports_ambient_credentials(self) -> bool:
        # Only bedrock can authenticate through the caller's cloud credential chain.
        return self is Family.BEDROCK

    @classmethod
    def parse(cls, text: str) -> Family | None:
        """Case-insensitive lookup by wire name (`openai-compat`) or enum name (`OPENAI_COMPAT`)."""
        cleaned = text.strip().lower()
        for family in cls:
            if cleaned in (family.value, family.name.lower()):
                return family
        return None


FAMILY_NAMES = tuple(f.value for f in Family)

_DISPLAY_NAMES = {
    Family.ANTHROPIC: "Anthropic",
    Family.AZURE: "Azure OpenAI",
    Family.BEDROCK: "Amazon Bedrock",
    Family.GOOGLE: "Google",
    Family.OPENAI: "OpenAI",
    Family.OPENAI_COMPAT: "OpenAI-compatible",
    Family.OPENROUTER: "OpenRouter",
    Family.VERCEL: "Vercel AI Gateway",
}
