"""PromptTemplate now belongs to workflows (workflows 0008): drop it from this app's state.

State only: the table `ai_orchestration_prompttemplate` and its rows stay, owned by
workflows.PromptTemplate. Reversible.
"""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("ai_orchestration", "0003_airun"),
        ("workflows", "0008_prompttemplate_from_ai_orchestration"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.DeleteModel(name="PromptTemplate")],
            database_operations=[],
        ),
    ]
