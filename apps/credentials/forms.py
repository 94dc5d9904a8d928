from __future__ import annotations

from django import forms

from apps.accounts.choices import CAN_EDIT
from apps.accounts.permissions import organizations_for
from apps.credentials.models import Credential
from apps.credentials.services import hosts_problems, value_problem


class CredentialForm(forms.ModelForm):
    """The value is write-only: never rendered back; blank on a change keeps the stored one."""

    value = forms.CharField(
        required=False,
        strip=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Write-only: it is never shown again. On a change, leave blank to keep it.",
    )
    hosts = forms.CharField(
        label="Allowed hosts",
        required=False,
        widget=forms.Textarea(attrs={"rows": 3, "spellcheck": "false"}),
        help_text="One per line: host, host:port or *.domain. http.request refuses to send the "
        "credential anywhere else; empty: nowhere.",
    )

    class Meta:
        model = Credential
        fields = ["organization", "name", "description"]

    def __init__(self, *args, user=None, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.fields.pop("organization", None)
            self.fields["hosts"].initial = "\n".join(self.instance.allowed_hosts)
        else:
            editable = organizations_for(user, CAN_EDIT)
            self.fields["organization"].queryset = editable
            if editable.count() == 1:
                self.fields["organization"].initial = editable.first()
            self.fields["value"].required = True

    def clean_value(self):
        value = self.cleaned_data["value"]
        if not value and self.instance.pk:
            return None  # keep the stored value
        problem = value_problem(value)
        if problem:
            raise forms.ValidationError(problem)
        return value

    def clean_hosts(self):
        hosts = [line.strip() for line in self.cleaned_data["hosts"].splitlines() if line.strip()]
        problems = hosts_problems(hosts)
        if problems:
            raise forms.ValidationError(list(problems.values()))
        return hosts
