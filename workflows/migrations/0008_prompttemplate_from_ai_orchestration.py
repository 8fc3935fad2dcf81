"""PromptTemplate moves from ai_orchestration into workflows, keeping its table and rows.

State only: the model is created here over the existing table
`ai_orchestration_prompttemplate` (ai_orchestration 0004 then drops it from that app's
state), and RoleContext's foreign key is pointed at it; the database is not touched
except for the content type row, which is relabelled so that admin permissions and log
entries follow the model. Reversible.
"""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


def content_type_relabel(old: str, new: str):
    def relabel(apps, schema_editor):
        ContentType = apps.get_model("contenttypes", "ContentType")
        db = schema_editor.connection.alias
        if ContentType.objects.using(db).filter(app_label=new, model="prompttemplate").exists():
            return  # created already (by a post_migrate run); the old row stays as it is
        ContentType.objects.using(db).filter(app_label=old, model="prompttemplate").update(
            app_label=new
        )

    return relabel


class Migration(migrations.Migration):
    dependencies = [
        ("workflows", "0007_check_runs_and_sandbox_settings"),
        ("ai_orchestration", "0003_airun"),
        ("contenttypes", "0002_remove_content_type_name"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
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
                        "db_table": "ai_orchestration_prompttemplate",
                        "ordering": ["role", "-version"],
                        "constraints": [
                            models.UniqueConstraint(fields=("role", "version"), name="prompt_unique_version"),
                            models.UniqueConstraint(condition=models.Q(("active", True)), fields=("role",), name="prompt_one_active_per_role"),
                        ],
                    },
                ),
                migrations.AlterField(
                    model_name="rolecontext",
                    name="prompt_template",
                    field=models.ForeignKey(null=True, on_delete=django.db.models.deletion.SET_NULL, related_name="+", to="workflows.prompttemplate"),
                ),
            ],
            database_operations=[
                migrations.RunPython(
                    content_type_relabel("ai_orchestration", "workflows"),
                    content_type_relabel("workflows", "ai_orchestration"),
                ),
            ],
        ),
    ]
