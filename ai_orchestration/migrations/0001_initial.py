import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True

    dependencies = [
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name="PromptTemplate",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("role", models.CharField(choices=[("Q_ASSISTANT", "Q Assistant"), ("CODE_WRITER", "Code Writer"), ("TEST_AUDITOR", "Test Auditor"), ("VERIFICATION_AUDITOR", "Verification Auditor"), ("RELEASE_MANAGER", "Release Manager")], max_length=30)),
                ("version", models.PositiveIntegerField()),
                ("body", models.TextField(help_text="System prompt. Placeholders: $role, $state, $project, $repository, $requirements, $evidence_schema.")),
                ("sha256", models.CharField(editable=False, max_length=64)),
                ("active", models.BooleanField(default=True)),
                ("note", models.CharField(blank=True, max_length=200)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                ("created_by", models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name="+", to=settings.AUTH_USER_MODEL)),
            ],
            options={
                "ordering": ["role", "-version"],
                "constraints": [
                    models.UniqueConstraint(fields=("role", "version"), name="prompt_unique_version"),
                    models.UniqueConstraint(condition=models.Q(("active", True)), fields=("role",), name="prompt_one_active_per_role"),
                ],
            },
        ),
    ]
