"""Hugging Face tokenizer_config.json / config.json: chat templates and trust_remote_code references."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mlwarden.artifacts.artifact import Artifact
from mlwarden.artifacts.sniff import Format
from mlwarden.core.findings import Severity
from mlwarden.core.policy import Limits, Policy
from mlwarden.scan.context import ScanContext
from tests.conftest import failing, rule_ids, scan_one
from tests.scan.static.test_template import CANARY, CHATML, LLAMA3, MISTRAL, TOOLS

PAYLOAD = "{{ cycler.__init__.__globals__.os.popen('" + CANARY + "').read() }}"


def _tokenizer_config(template: Any, n_added: int = 3) -> dict[str, Any]:
    """The shape transformers writes (Qwen2/Llama-3 style)."""
    added = {
        str(151643 + i): {
            "content": f"<|extra_{i}|>",
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for i in range(n_added)
    }
    return {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": None,
        "chat_template": template,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 32768,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }


def _write(path: Path, obj: Any) -> Path:
    path.write_text(json.dumps(obj, indent=2))
    return path


@pytest.mark.parametrize("template", [CHATML, LLAMA3, MISTRAL, TOOLS], ids=["chatml", "llama3", "mistral", "tools"])
def test_benign_tokenizer_config(tmp_path: Path, template: str) -> None:
    result = scan_one(_write(tmp_path / "tokenizer_config.json", _tokenizer_config(template)))
    assert result.formats[0][1] == "hf-tokenizer-config"
    assert failing(result) == []


def test_malicious_tokenizer_config(tmp_path: Path) -> None:
    result = scan_one(_write(tmp_path / "tokenizer_config.json", _tokenizer_config(CHATML + PAYLOAD)))
    hit = next(f for f in result.findings if f.rule_id == "MLW-TPL-001")
    assert hit.severity is Severity.CRITICAL
    assert hit.detail("template") == "chat_template"


def test_named_template_list(tmp_path: Path) -> None:
    templates = [
        {"name": "default", "template": CHATML},
        {"name": "tool_use", "template": TOOLS},
        {"name": "rag", "template": PAYLOAD},
    ]
    result = scan_one(_write(tmp_path / "tokenizer_config.json", _tokenizer_config(templates)))
    hits = [f for f in result.findings if f.rule_id == "MLW-TPL-001"]
    assert [h.detail("template") for h in hits] == ["chat_template[rag]"]


def test_bad_template_field_is_low(tmp_path: Path) -> None:
    result = scan_one(_write(tmp_path / "tokenizer_config.json", _tokenizer_config([{"name": "x"}, 3])))
    assert [(f.rule_id, f.severity) for f in result.findings] == [("MLW-HF-003", Severity.LOW)] * 2


def test_large_tokenizer_config_is_sniffed(tmp_path: Path) -> None:
    result = scan_one(_write(tmp_path / "tokenizer_config.json", _tokenizer_config(PAYLOAD, n_added=1000)))
    assert result.formats[0][1] == "hf-tokenizer-config"
    assert "MLW-TPL-001" in rule_ids(result)


def _scan_as(path: Path, fmt: Format, limits: Limits | None = None) -> list:
    ctx = ScanContext(Policy(limits=limits or Limits()))
    ctx.descend(Artifact.from_path(path), fmt)
    return ctx.findings


def test_large_tokenizer_config_handler(tmp_path: Path) -> None:
    path = _write(tmp_path / "tokenizer_config.json", _tokenizer_config(PAYLOAD, n_added=1000))
    assert "MLW-TPL-001" in rule_ids(_scan_as(path, Format.HF_TOKENIZER_CONFIG))


def test_malformed_json_is_low(tmp_path: Path) -> None:
    path = tmp_path / "tokenizer_config.json"
    path.write_text('{"chat_template": "{{ x }}", ')
    findings = _scan_as(path, Format.HF_TOKENIZER_CONFIG)
    assert [(f.rule_id, f.severity) for f in findings] == [("MLW-HF-002", Severity.LOW)]


def test_text_limit(tmp_path: Path) -> None:
    path = _write(tmp_path / "tokenizer_config.json", _tokenizer_config(CHATML))
    assert rule_ids(_scan_as(path, Format.HF_TOKENIZER_CONFIG, Limits(max_text_size=100))) == {"MLW-GEN-001"}


# --- config.json ------------------------------------------------------------------------------------------

PLAIN_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 64,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "vocab_size": 128,
    "torch_dtype": "float32",
    "transformers_version": "4.44.0",
}


def test_plain_config_is_clean(tmp_path: Path) -> None:
    result = scan_one(_write(tmp_path / "config.json", PLAIN_CONFIG))
    assert result.formats[0][1] == "hf-config"
    assert result.findings == ()


def test_auto_map_local_module(tmp_path: Path) -> None:
    config = {
        **PLAIN_CONFIG,
        "auto_map": {"AutoConfig": "configuration_x.XConfig", "AutoModelForCausalLM": "modeling_x.XForCausalLM"},
    }
    (tmp_path / "configuration_x.py").write_text("class XConfig: pass\n")
    result = scan_one(_write(tmp_path / "config.json", config))
    hits = sorted((f for f in result.findings if f.rule_id == "MLW-HF-001"), key=lambda f: f.detail("key"))
    assert [h.severity for h in hits] == [Severity.LOW, Severity.LOW]  # the model's own code: scanned as source
    assert hits[0].detail("module") == "configuration_x"
    assert hits[0].detail("file_present") is True
    assert hits[1].detail("module") == "modeling_x"
    assert hits[1].detail("file_present") is False
    assert "modeling_x.py NOT present" in hits[1].evidence


def test_auto_map_other_repository(tmp_path: Path) -> None:
    config = {
        **PLAIN_CONFIG,
        "auto_map": {
            "AutoModel": "someone/other-repo--modeling_evil.EvilModel",
            "AutoTokenizer": ["tokenization_x.XTokenizer", None],
        },
    }
    result = scan_one(_write(tmp_path / "config.json", config))
    by_key = {f.detail("key"): f for f in result.findings if f.rule_id == "MLW-HF-001"}
    assert by_key["auto_map.AutoModel"].detail("repository") == "someone/other-repo"
    assert by_key["auto_map.AutoModel"].severity is Severity.MEDIUM  # code from elsewhere, can change after review
    assert by_key["auto_map.AutoTokenizer"].severity is Severity.LOW
    assert "another repository" in by_key["auto_map.AutoModel"].evidence
    assert by_key["auto_map.AutoTokenizer"].detail("class") == "XTokenizer"


def test_custom_pipeline_and_odd_module_name(tmp_path: Path) -> None:
    config = {**PLAIN_CONFIG, "custom_pipelines": {"text-x": {"impl": "../../evil.Pipe", "pt": []}}}
    findings = _scan_as(_write(tmp_path / "config.json", config), Format.HF_CONFIG)
    (hit,) = findings
    assert hit.detail("key") == "custom_pipelines.text-x"
    assert hit.detail("suspicious_module_name") is True
    assert hit.severity is Severity.MEDIUM


def test_tokenizer_config_auto_map(tmp_path: Path) -> None:
    obj = {**_tokenizer_config(CHATML), "auto_map": {"AutoTokenizer": ["tokenization_x.XTokenizer", None]}}
    result = scan_one(_write(tmp_path / "tokenizer_config.json", obj))
    assert rule_ids(result) >= {"MLW-HF-001"}
    assert not failing(result)  # the tokenizer's own module: low
