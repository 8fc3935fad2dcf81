"""Prompt templates in the admin: saving publishes a new version; old rows never change."""

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import quote
from django.db.models import Model
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse

from workflows.admin_base import NulSafeModelAdmin
from workflows.models import PromptTemplate
from workflows.prompts import prompt_template_publish

PUBLISH_HELP = (
    "Saving publishes this text as a new version of the role's prompt and makes it the "
    "active one. The version you opened is kept unchanged (inactive), so workflows that "
    "used it can still be audited."
)


class PromptTemplateForm(forms.ModelForm):
    class Meta:
        model = PromptTemplate
        fields = ("role", "body", "note")
        widgets = {"body": forms.Textarea(attrs={"rows": 30, "cols": 100})}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if "body" in self.fields:
            self.fields["body"].help_text = f"{PUBLISH_HELP} {self.fields['body'].help_text}"
        if "note" in self.fields:
            self.fields["note"].help_text = "What changed and why; kept with the new version."
            if self.instance.pk:
                self.initial["note"] = ""  # a new version gets its own note


@admin.register(PromptTemplate)
class PromptTemplateAdmin(NulSafeModelAdmin):
    form = PromptTemplateForm
    list_display = ("role", "version", "active", "sha256_short", "note", "created_by", "created_at")
    list_filter = ("role", "active", "created_at")
    list_select_related = ("created_by",)
    search_fields = ("role", "note", "sha256", "body")
    actions = None

    @admin.display(description="sha256", ordering="sha256")
    def sha256_short(self, obj: PromptTemplate) -> str:
        return obj.sha256[:12]

    def get_fields(self, request: HttpRequest, obj: PromptTemplate | None = None) -> tuple:
        if obj is None:
            return ("role", "body", "note")
        return (
            "role",
            "version",
            "active",
            "sha256",
            "created_by",
            "created_at",
            "body",
            "note",
        )

    def get_readonly_fields(self, request: HttpRequest, obj: PromptTemplate | None = None) -> tuple:
        if obj is None:
            return ()
        return ("role", "version", "active", "sha256", "created_by", "created_at")

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False  # role contexts and messages point at versions by hash

    def save_model(
        self, request: HttpRequest, obj: PromptTemplate, form: Any, change: bool
    ) -> None:
        """Publish a new version instead of saving `obj`; `obj` then stands for the new row."""
        if change and obj.active and "body" not in form.changed_data:
            obj.refresh_from_db()  # drop the unsaved note edit; nothing was published
            obj._published = False
            return
        published = prompt_template_publish(
            role=obj.role,
            body=form.cleaned_data["body"],
            actor=request.user,
            note=form.cleaned_data.get("note", ""),
        )
        for field in PromptTemplate._meta.concrete_fields:
            setattr(obj, field.attname, getattr(published, field.attname))
        obj._state.adding = False
        obj._state.db = published._state.db
        obj._published = True

    def log_change(self, request: HttpRequest, obj: PromptTemplate, message: Any) -> Any:
        if obj.__dict__.get("_published"):
            return self.log_addition(request, obj, [{"added": {}}])
        return super().log_change(request, obj, message)

    def response_add(
        self, request: HttpRequest, obj: PromptTemplate, post_url_continue: str | None = None
    ) -> HttpResponse:
        return self._published_response(request, obj)

    def response_change(self, request: HttpRequest, obj: PromptTemplate) -> HttpResponse:
        return self._published_response(request, obj)

    def _published_response(self, request: HttpRequest, obj: PromptTemplate) -> HttpResponse:
        if obj.__dict__.pop("_published", True):
            self.message_user(
                request,
                f"Published {obj.role} v{obj.version} (sha256 {obj.sha256[:12]}); it is now "
                f"the active prompt. Earlier versions are kept unchanged.",
                messages.SUCCESS,
            )
        else:
            self.message_user(
                request,
                f"The body is unchanged, so nothing was published; {obj.role} "
                f"v{obj.version} stays active.",
                messages.INFO,
            )
        info = self.opts.app_label, self.opts.model_name
        if "_continue" in request.POST:
            url = reverse(
                "admin:{}_{}_change".format(*info),
                args=[quote(obj.pk)],
                current_app=self.admin_site.name,
            )
        elif "_addanother" in request.POST:
            url = reverse("admin:{}_{}_add".format(*info), current_app=self.admin_site.name)
        else:
            url = reverse("admin:{}_{}_changelist".format(*info), current_app=self.admin_site.name)
        return HttpResponseRedirect(url)
