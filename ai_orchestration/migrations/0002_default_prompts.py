"""Load the shipped system prompts as version 1 of each role's template."""

import hashlib

from django.db import migrations

from workflows.default_prompts import DEFAULT_PROMPTS


def load(apps, schema_editor):
    PromptTemplate = apps.get_model("ai_orchestration", "PromptTemplate")
    for role, body in DEFAULT_PROMPTS.items():
        if PromptTemplate.objects.filter(role=role).exists():
            continue
        PromptTemplate.objects.create(
            role=role,
            version=1,
            body=body,
            sha256=hashlib.sha256(body.encode()).hexdigest(),
            active=True,
            note="shipped default",
        )


def unload(apps, schema_editor):
    PromptTemplate = apps.get_model("ai_orchestration", "PromptTemplate")
    PromptTemplate.objects.filter(version=1, note="shipped default").delete()


class Migration(migrations.Migration):
    dependencies = [("ai_orchestration", "0001_initial")]

    operations = [migrations.RunPython(load, unload)]
