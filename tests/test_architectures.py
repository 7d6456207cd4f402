"""The architecture registry is the one home of architecture facts."""

from __future__ import annotations

import io
import tokenize

import pytest
from quiltflow.core.architectures import REGISTRY, architecture
from quiltflow.core.errors import UserError
from quiltflow.core.schema import load_schema
from quiltflow.models import builders as models
from workflow_runner import REPO

REGISTRY_MODULES = {"architectures.py", "models.py"}  # the registry and the builders


def test_schema_enum_is_the_registry():
    enum = load_schema()["properties"]["models"]["additionalProperties"]["properties"]["architecture"]["enum"]
    assert sorted(enum) == sorted(REGISTRY)


def test_every_entry_has_its_builder():
    for spec in REGISTRY.values():
        assert callable(getattr(models, spec.builder, None)), spec.builder
        assert spec.default_weights in ("none", "imagenet")
        assert spec.accepts_weights or spec.default_weights == "none"
        assert not (spec.trains_on_features and spec.default_augment)


def test_unknown_architecture_is_one_line():
    with pytest.raises(UserError, match=r"^architecture: unknown architecture 'vgg'; choose one of"):
        architecture("vgg")


def test_no_other_module_names_an_architecture():
    """Outside the registry and the builders, code asks the registry (docstrings and comments aside)."""
    named = []
    roots = [REPO / "workflow" / "quiltflow", REPO / "workflow" / "scripts"]
    for path in sorted(p for root in roots for p in root.glob("*.py")):
        if path.name in REGISTRY_MODULES:
            continue
        tokens = tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
        previous = None
        for token in tokens:
            is_docstring = previous in (None, tokenize.INDENT, tokenize.NEWLINE) and token.type == tokenize.STRING
            if token.type in (tokenize.STRING, tokenize.NAME) and not is_docstring:
                if any(name in token.string for name in REGISTRY):
                    named.append(f"{path.name}:{token.start[0]} {token.string[:60]}")
            if token.type not in (tokenize.NL, tokenize.COMMENT):
                previous = token.type
    assert not named, named
