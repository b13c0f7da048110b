from django.contrib import admin

from lifecycle.core.admin import ReadOnlyAdmin
from lifecycle.runs.models import Checkpoint, EvalReport, Run


# Runs change through their model methods (start, cancel, resume) and the worker, which
# write the audit trail; the admin only shows them.


@admin.register(Run)
class RunAdmin(ReadOnlyAdmin):
    list_display = ("id", "name", "dataset_version", "base_model", "method", "attempt", "created_at")
    list_filter = ("task", "method")
    list_select_related = ("dataset_version__dataset",)
    search_fields = ("name", "base_model")


@admin.register(Checkpoint)
class CheckpointAdmin(ReadOnlyAdmin):
    list_display = ("run", "step", "size", "created_at")


@admin.register(EvalReport)
class EvalReportAdmin(ReadOnlyAdmin):
    list_display = ("run", "split", "created_at")
