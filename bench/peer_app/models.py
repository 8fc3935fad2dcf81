"""The plain django-fsm-2 peer: one FSMField, one `@transition`, a StateLog row per move.

`PeerWorkflow.complete(by=user)` moves DISCOVERY -> PLANNING -> ... -> DEPLOYMENT -> COMPLETE;
`fsm_log_by` (django-fsm-log) records who, and django-fsm-log's post_transition receiver
inserts the `django_fsm_log.StateLog` row (its default SimpleBackend: at once, in the
caller's transaction).
"""

from django.db import models
from django_fsm import RETURN_VALUE, FSMField, transition
from django_fsm_log.decorators import fsm_log_by

PHASES = ("DISCOVERY", "PLANNING", "IMPLEMENTATION", "TESTING", "VERIFICATION", "DEPLOYMENT")
NEXT = dict(zip(PHASES, (*PHASES[1:], "COMPLETE"), strict=True))


class PeerWorkflow(models.Model):
    state = FSMField(max_length=20, default=PHASES[0], protected=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"peer workflow {self.pk} in {self.state}"

    @fsm_log_by
    @transition(field=state, source=list(PHASES), target=RETURN_VALUE(*NEXT.values()))
    def complete(self, by=None) -> str:
        return NEXT[self.state]
