"""YAML for configuration files, read the YAML 1.2 way: only ``true``/``false`` are booleans.

PyYAML follows YAML 1.1, where ``on``, ``off``, ``yes``, ``no``, ``y`` and ``n`` are booleans too: a playbook's
``on: [drift]`` would silently become ``True: [drift]``. This loader keeps those words strings, so a config key
or value means what it says. Everything else is ``yaml.SafeLoader`` (no Python objects are ever built).
"""

from __future__ import annotations

import re
from typing import Any

import yaml


class ConfigLoader(yaml.SafeLoader):
    """``SafeLoader`` with YAML 1.2 booleans (see the module docstring)."""


ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def load_config_yaml(text: str) -> Any:
    """Parse one YAML document with :class:`ConfigLoader` (raises ``yaml.YAMLError``)."""
    return yaml.load(text, Loader=ConfigLoader)  # noqa: S506 - ConfigLoader is a SafeLoader
