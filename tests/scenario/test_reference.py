"""docs/scenario.md is the schema's own reference: complete, current, and every key explained."""

import re
from pathlib import Path

import yaml

from raysim.scenario.reference import scenario_reference, undocumented
from raysim.scenario.schema import parse_scenario


def test_every_key_has_a_description():
    assert undocumented() == []


def test_docs_scenario_md_is_current():
    doc = Path(__file__).resolve().parents[2] / "docs" / "scenario.md"
    assert doc.read_text() == scenario_reference(), "regenerate: raysim reference > docs/scenario.md"


def test_the_reference_defaults_are_the_schema_defaults():
    # Each row's default, read back as YAML, builds the same scenario as the schema's defaults.
    text = scenario_reference()
    section, raw = "", {}
    for line in text.splitlines():
        if line.startswith("## "):
            section = "" if line == "## top level" else line[4:-1]
        elif line.startswith("| `"):
            key, _, default = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip("|"))][:3]
            node = raw
            for part in filter(None, section.split(".")):
                node = node.setdefault(part, {})
            node[key.strip("`")] = yaml.safe_load(default.strip("`"))
    assert parse_scenario(raw) == parse_scenario({})
