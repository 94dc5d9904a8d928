from __future__ import annotations

import json

import yaml
from django import forms

from apps.accounts.choices import CAN_EDIT
from apps.accounts.permissions import organizations_for
from apps.workflows.definition import (
    DefinitionError,
    dump_document,
    load_yaml,
    normalize,
    parse_document,
)
from apps.workflows.models import Workflow
from config.limits import document_problem, loads_json, problem_text


class WorkflowDefinitionForm(forms.ModelForm):
    """Edit the draft as YAML; every validation problem is shown with its path."""

    definition = forms.CharField(
        label="Definition (YAML or JSON)",
        widget=forms.Textarea(attrs={"rows": 30, "class": "opsflow-code", "spellcheck": "false"}),
        help_text="The workflow definition document. Saving validates it completely; nothing is stored on errors.",
    )

    webhook_secret = forms.CharField(
        required=False,
        max_length=200,
        strip=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Write-only: it is never shown again. When set, webhook calls must carry an "
        "HMAC-SHA256 signature made with it. Leave blank to keep the current one.",
    )
    remove_webhook_secret = forms.BooleanField(
        required=False, label="Remove the webhook secret (unsigned calls are accepted again)"
    )

    class Meta:
        model = Workflow
        fields = ["organization", "is_active", "webhook_secret"]

    def __init__(self, *args, user=None, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.fields["definition"].initial = dump_document(self.instance.draft)
            self.fields.pop("organization", None)
        else:
            editable = organizations_for(user, CAN_EDIT)
            self.fields["organization"].queryset = editable
            if editable.count() == 1:
                self.fields["organization"].initial = editable.first()
            self.fields["definition"].initial = STARTER
        self.problems: list[str] = []

    def clean_definition(self):
        try:
            document = parse_document(self.cleaned_data["definition"])
            definition = normalize(document)
        except DefinitionError as exc:
            self.problems = [str(p) for p in exc.problems]
            raise forms.ValidationError(self.problems) from None
        if self.instance.pk and definition["slug"] != self.instance.slug:
            raise forms.ValidationError(f"slug: cannot change the slug of {self.instance.slug!r}")
        return document  # stored as written; services normalize it again for versions

    def clean_webhook_secret(self):
        """Blank keeps the stored secret (the form never shows it); remove drops it."""
        if self.data.get(self.add_prefix("remove_webhook_secret")):
            return ""
        return self.cleaned_data["webhook_secret"] or self.instance.webhook_secret

    def clean(self):
        cleaned = super().clean()
        definition, organization = cleaned.get("definition"), cleaned.get("organization")
        duplicate = (
            not self.instance.pk
            and definition
            and organization
            and Workflow.objects.filter(organization=organization, slug=definition["slug"]).exists()
        )
        if duplicate:
            self.add_error(
                "definition", f"slug: a workflow with slug {definition['slug']!r} already exists"
            )
        return cleaned


class RunWorkflowForm(forms.Form):
    """Run now: a field per declared variable, typed (`mode=form`, the page's main button), or
    the whole mapping as YAML (the "advanced" box, and any post without `mode`)."""

    variables = forms.CharField(
        required=False,
        label="Variables (YAML or JSON mapping)",
        widget=forms.Textarea(attrs={"rows": 8, "class": "opsflow-code", "spellcheck": "false"}),
    )

    def __init__(self, *args, specs: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.specs = specs or {}
        for name, spec in self.specs.items():
            self.fields[f"var_{name}"] = _variable_field(name, spec)

    @property
    def typed(self) -> bool:
        return self.data.get("mode") == "form"

    def variable_fields(self):
        return [self[f"var_{name}"] for name in self.specs]

    def chosen_variables(self) -> dict:
        """What to run with: the typed fields' values (blank ones left to their defaults), or
        the YAML mapping."""
        if not self.typed:
            return self.cleaned_data["variables"]
        chosen = {}
        for name in self.specs:
            value = self.cleaned_data.get(f"var_{name}")
            if value is not None and value != "":
                chosen[name] = value
        return chosen

    def clean(self):
        cleaned = super().clean()
        if not self.typed:  # the typed fields only count when their button sent the form
            for name in self.specs:
                self.errors.pop(f"var_{name}", None)
        return cleaned

    def clean_variables(self):
        text = self.cleaned_data["variables"].strip()
        if not text:
            return {}
        try:
            value = load_yaml(text)
        except yaml.YAMLError as exc:
            raise forms.ValidationError(f"not valid YAML or JSON: {exc}") from None
        if not isinstance(value, dict):
            raise forms.ValidationError("must be a mapping of variable names to values")
        return value


class JSONValueField(forms.CharField):
    """A JSON value typed into a form, within the documents' bounds (Django's JSONField parses
    a deeply nested text into a RecursionError)."""

    def clean(self, value):
        text = super().clean(value)
        if text in (None, ""):
            return None
        try:
            parsed = loads_json(text)
        except ValueError as exc:
            raise forms.ValidationError(f"not valid JSON: {exc}") from None
        problem = document_problem(parsed)
        if problem:
            raise forms.ValidationError(problem_text(problem, "the value"))
        return parsed


def _variable_field(name: str, spec: dict) -> forms.Field:
    """The form field for one declared variable: its type, its default, whether required."""
    kind = spec.get("type", "any")
    default = spec.get("default")
    required = bool(spec.get("required")) and default is None
    described = (
        [kind]
        + (["required"] if required else [])
        + ([f"default {json.dumps(default)}"] if default is not None else [])
    )
    common = {
        "label": name,
        "required": required,
        "initial": default,
        "help_text": ", ".join(described),
    }
    if kind == "integer":
        return forms.IntegerField(**common)
    if kind == "number":
        return forms.FloatField(**common)
    if kind == "boolean":
        common["initial"] = "" if default is None else ("true" if default else "false")
        return forms.TypedChoiceField(
            choices=[("", "—"), ("true", "true"), ("false", "false")],
            coerce=lambda v: v == "true",
            empty_value=None,
            **common,
        )
    if kind in ("object", "array", "any"):
        common["initial"] = "" if default is None else json.dumps(default)
        return JSONValueField(
            widget=forms.Textarea(attrs={"rows": 3, "class": "opsflow-code"}), **common
        )
    return forms.CharField(strip=False, **common)


STARTER = """slug: my-workflow
name: My workflow
nodes:
  - id: hello
    type: shell.command
    config: {command: ["echo", "hello"]}
edges: []
"""
