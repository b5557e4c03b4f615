"""Planning a LiteLLM import: the mapping of a `model_list` to provider and model configs, without a service."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from modelroute.litellm_import import (
    DEFAULT_CONTEXT_LIMIT,
    ImportPlan,
    LiteLLMImportError,
    load_config,
    plan_import,
    slug,
)

ENV = {"OPENAI_KEY": "sk-openai", "AZURE_KEY": "az-azure", "OTHER_OPENAI_KEY": "sk-other"}


def deployment(model_name: str, model: str, **params: Any) -> dict[str, Any]:
    info = params.pop("model_info", None)
    entry: dict[str, Any] = {"model_name": model_name, "litellm_params": {"model": model, **params}}
    if info is not None:
        entry["model_info"] = info
    return entry


def plan(*entries: dict[str, Any], environ: dict[str, str] | None = None, **sections: Any) -> ImportPlan:
    return plan_import({"model_list": list(entries), **sections}, ENV if environ is None else environ)


def order_of(result: ImportPlan, model_id: str) -> list[tuple[str, str]]:
    model = next(m for m in result.models if m.id == model_id)
    return [(a.provider_config_id, a.model_override) for a in model.attachments]


@pytest.mark.parametrize(
    ("model_name", "expected"),
    [
        ("gpt-4o", "gpt-4o"),
        ("GPT-4o", "gpt-4o"),
        ("claude-3.5-sonnet", "claude-3-5-sonnet"),
        ("openai/gpt-4o", "openai-gpt-4o"),
        ("my model", "my-model"),
        ("o1:", "o1"),
    ],
)
def test_a_model_name_becomes_a_slug(model_name: str, expected: str) -> None:
    assert slug(model_name) == expected
    assert plan(deployment(model_name, "openai/x")).models[0].id == expected


@pytest.mark.parametrize(
    ("model", "api_base", "family", "upstream"),
    [
        ("openai/gpt-4o", None, "openai", "gpt-4o"),
        ("openai/llama-3", "http://vllm.internal:8000/v1", "openai-compat", "llama-3"),
        ("azure/gpt4o-prod", "https://eu.openai.azure.com", "azure", "gpt4o-prod"),
        ("anthropic/claude-sonnet-4", None, "anthropic", "claude-sonnet-4"),
        ("bedrock/anthropic.claude-3-haiku", None, "bedrock", "anthropic.claude-3-haiku"),
        ("gemini/gemini-2.0-flash", None, "google", "gemini-2.0-flash"),
        ("vertex_ai/gemini-1.5-pro", None, "google", "gemini-1.5-pro"),
        ("openrouter/anthropic/claude-3", None, "openrouter", "anthropic/claude-3"),
        ("vercel_ai_gateway/openai/gpt-4o", None, "vercel", "openai/gpt-4o"),
    ],
)
def test_each_provider_prefix_gives_its_family(model: str, api_base: str | None, family: str, upstream: str) -> None:
    params = {"api_base": api_base} if api_base else {}
    result = plan(deployment("m", model, **params))
    (planned,) = result.models
    assert (planned.to_dict()["family"], planned.model) == (family, upstream)
    assert result.providers[0].to_dict()["family"] == family
    assert not result.not_imported


@pytest.mark.parametrize(
    ("model", "params", "why"),
    [
        ("groq/llama-3", {}, "no provider family"),
        ("gpt-4o", {}, "no provider family"),
        ("azure/gpt4o", {}, "needs api_base"),
        ("openai/*", {}, "wildcard"),
    ],
)
def test_what_has_no_mapping_is_listed_never_dropped(model: str, params: dict[str, Any], why: str) -> None:
    result = plan(deployment("kept", "openai/gpt-4o"), deployment("other", model, **params))
    assert [m.id for m in result.models] == ["kept"]
    (left_out,) = result.not_imported
    assert left_out.source == "model_list[1] (other)" and why in left_out.reason


def test_order_first_by_order_then_the_others_ties_by_position() -> None:
    result = plan(
        deployment("gpt-4o", "openai/gpt-4o", api_key="os.environ/OPENAI_KEY"),
        deployment("gpt-4o", "azure/eu-gpt4o", api_base="https://eu.openai.azure.com", order=2),
        deployment("gpt-4o", "openrouter/openai/gpt-4o"),
        deployment("gpt-4o", "azure/us-gpt4o", api_base="https://us.openai.azure.com", order=1),
        deployment("gpt-4o", "openai/gpt-4o", api_key="os.environ/OTHER_OPENAI_KEY", order=2),
    )
    # The first in order gives the model its family and name (azure, us-gpt4o); the others get overrides.
    (model,) = result.models
    assert (model.to_dict()["family"], model.model) == ("azure", "us-gpt4o")
    assert order_of(result, "gpt-4o") == [
        ("azure-us-openai-azure-com", ""),
        ("azure-eu-openai-azure-com", "eu-gpt4o"),
        ("openai-2", "gpt-4o"),
        ("openai", "gpt-4o"),
        ("openrouter", "openai/gpt-4o"),
    ]


def test_an_override_only_where_the_name_or_the_family_differs() -> None:
    result = plan(
        deployment("gpt-4o", "openai/gpt-4o", api_key="os.environ/OPENAI_KEY"),
        deployment("gpt-4o", "openai/gpt-4o", api_key="os.environ/OTHER_OPENAI_KEY"),
        deployment("gpt-4o", "openrouter/gpt-4o"),
    )
    assert order_of(result, "gpt-4o") == [("openai", ""), ("openai-2", ""), ("openrouter", "gpt-4o")]


def test_one_provider_config_per_family_base_url_and_key() -> None:
    result = plan(
        deployment("a", "openai/gpt-4o", api_key="os.environ/OPENAI_KEY"),
        deployment("b", "openai/gpt-4o-mini", api_key="os.environ/OPENAI_KEY"),
        deployment("c", "openai/o3", api_key="sk-inline-one"),
        deployment("d", "openai/o4", api_key="sk-inline-two"),
        deployment("e", "openai/llama", api_base="http://vllm.internal:8000/v1"),
        deployment("f", "openai/qwen", api_base="http://vllm.internal:9000/v1"),
    )
    providers = [(p.id, p.to_dict()["family"], p.base_url, p.key_reference) for p in result.providers]
    assert providers == [
        ("openai", "openai", "", "os.environ/OPENAI_KEY"),
        ("openai-2", "openai", "", "inline"),
        ("openai-3", "openai", "", "inline"),
        ("openai-compat-vllm-internal", "openai-compat", "http://vllm.internal:8000/v1", ""),
        ("openai-compat-vllm-internal-2", "openai-compat", "http://vllm.internal:9000/v1", ""),
    ]
    # Keys come from the environment or the file, and are never part of what the plan prints.
    assert [p.api_key for p in result.providers] == ["sk-openai", "sk-inline-one", "sk-inline-two", "", ""]
    assert [p.key_label for p in result.providers] == [
        "os.environ/OPENAI_KEY",
        "inline key",
        "inline key",
        "deployment key",
        "deployment key",
    ]
    assert "sk-" not in repr(result) and "sk-" not in str(result.to_dict())


def test_a_missing_environment_variable_names_every_one_missing() -> None:
    with pytest.raises(LiteLLMImportError) as raised:
        plan(
            deployment("a", "openai/gpt-4o", api_key="os.environ/NOT_SET_ONE"),
            deployment("b", "azure/x", api_base="os.environ/NOT_SET_TWO", api_key="os.environ/AZURE_KEY"),
        )
    assert "NOT_SET_ONE, NOT_SET_TWO" in str(raised.value) and "nothing was written" in str(raised.value)


def test_an_api_base_from_the_environment() -> None:
    result = plan(
        deployment("a", "azure/x", api_base="os.environ/AZURE_BASE"),
        environ={"AZURE_BASE": "https://eu.openai.azure.com"},
    )
    assert result.providers[0].base_url == "https://eu.openai.azure.com"


def test_two_names_with_one_slug_are_an_error_naming_both() -> None:
    with pytest.raises(LiteLLMImportError, match="'GPT 4o' and 'gpt-4o' both become the model id 'gpt-4o'"):
        plan(deployment("GPT 4o", "openai/gpt-4o"), deployment("gpt-4o", "openai/gpt-4o"))


def test_a_name_that_gives_no_valid_id_is_an_error() -> None:
    with pytest.raises(LiteLLMImportError, match="not a valid model config id"):
        plan(deployment("4o", "openai/gpt-4o"))


def test_options_context_limit_and_prices_from_the_first_deployment() -> None:
    result = plan(
        deployment(
            "gpt-4o",
            "openai/gpt-4o",
            temperature=0.2,
            max_tokens=4096,
            rpm=100,
            model_info={"max_input_tokens": 128000, "input_cost_per_token": 2.5e-06, "id": "x"},
        ),
        deployment("gpt-4o", "openrouter/openai/gpt-4o", temperature=0.7),
        deployment("mini", "openai/gpt-4o-mini"),
    )
    model, mini = result.models
    assert model.context_limit == 128000
    assert dict(model.options) == {"temperature": 0.2, "max_output_tokens": 4096, "input_price_per_mtok": 2.5}
    assert mini.context_limit is None and mini.to_dict()["context_limit"] == DEFAULT_CONTEXT_LIMIT
    reported = {(n.source, n.what) for n in result.not_imported}
    assert ("model_list[0] (gpt-4o)", "litellm_params.rpm, model_info.id") in reported
    assert (
        "model_list[1] (gpt-4o)",
        "input_price_per_mtok, max_output_tokens, temperature, context_limit",
    ) in reported


def test_other_sections_are_listed_and_a_second_deployment_through_one_provider_is_reported() -> None:
    result = plan(
        deployment("gpt-4o", "openai/gpt-4o"),
        deployment("gpt-4o", "openai/gpt-4o-2024-08-06"),
        router_settings={"routing_strategy": "simple-shuffle"},
        litellm_settings={"drop_params": True},
    )
    assert order_of(result, "gpt-4o") == [("openai", "")]
    what = {(n.source, n.what) for n in result.not_imported}
    assert ("router_settings", "the whole section") in what and ("litellm_settings", "the whole section") in what
    assert ("model_list[1] (gpt-4o)", "a second deployment through provider config openai") in what


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({}, "no model_list"),
        ({"model_list": []}, "no model_list"),
        ({"model_list": [{"model_name": "a", "litellm_params": {"model": "openai/a", "order": "x"}}]}, "order"),
        (
            {"model_list": [{"model_name": "a", "litellm_params": {"model": "openai/a", "temperature": "hot"}}]},
            "temperature must be a number",
        ),
        (
            {"model_list": [{"model_name": "a", "litellm_params": {"model": "openai/a", "api_base": "vllm:8000"}}]},
            "api_base must be an absolute http",
        ),
        (
            {
                "model_list": [
                    {"model_name": "a", "litellm_params": {"model": "openai/a"}, "model_info": {"max_input_tokens": 0}}
                ]
            },
            "max_input_tokens must be a positive integer",
        ),
    ],
)
def test_a_file_that_cannot_be_imported_as_it_is(config: dict[str, Any], message: str) -> None:
    with pytest.raises(LiteLLMImportError, match=message):
        plan_import(config, ENV)


def test_loading_the_file(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("model_list:\n  - model_name: a\n    litellm_params: {model: openai/a}\n")
    assert plan_import(load_config(path), {}).models[0].id == "a"
    # A broken file: where and what, never the offending line (it may hold an inline key).
    path.write_text("model_list:\n  - litellm_params:\n      api_key: sk-inline-secret: x\n")  # PyYAML quotes it
    with pytest.raises(LiteLLMImportError, match=r"not valid YAML at line \d+, column \d+") as raised:
        load_config(path)
    assert "sk-inline-secret" not in str(raised.value)
    with pytest.raises(LiteLLMImportError, match=r"missing\.yaml"):
        load_config(tmp_path / "missing.yaml")
